#!/usr/bin/env bash
# Build llama-cpp-python (MIT; llama.cpp with libmtmd, its multimodal library) from its sdist into the venv,
# for the GGUF export tests (tests/interop/test_gguf_export.py) and `make demo`'s llama.cpp check.
# About 4-6 minutes on 2 cores, once per venv: skipped when this version, so built, is already there.
#
# One fix is applied to the vendored llama.cpp before building: its llava graph (tools/mtmd/models/llava.cpp)
# appends the CLIP CLS token after the patches, while the positions and the patch rows it reads assume
# CLS first, so every CLIP-based LLaVA model gets shifted position embeddings and the CLS output as an
# image token (llama.cpp issue #25814, fix proposed in PR #25844). The fix puts the CLS token first.
# Without it, llama.cpp's answers from CLIP-based mmproj files (ours, and every LLaVA-1.5 file) differ.
set -euo pipefail
BIN=${1:-.venv/bin}
VERSION=0.3.36
MARK="$BIN/../.llama_cpp_$VERSION"
if [ -f "$MARK" ] && "$BIN/python" -c "import llama_cpp" 2>/dev/null; then exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$BIN/pip" download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$tmp"
tar -xzf "$tmp/llama_cpp_python-$VERSION.tar.gz" -C "$tmp"
src="$tmp/llama_cpp_python-$VERSION"
graph="$src/vendor/llama.cpp/tools/mtmd/models/llava.cpp"
if ! grep -q 'ggml_concat(ctx0, inp, model.class_embedding, 1)' "$graph"; then
    echo "error: $graph no longer appends the CLS token as expected; check llama.cpp #25814 before changing VERSION" >&2
    exit 1
fi
sed -i 's/ggml_concat(ctx0, inp, model.class_embedding, 1)/ggml_concat(ctx0, model.class_embedding, inp, 1)/' "$graph"
echo "building llama-cpp-python $VERSION from source (a few minutes)..."
start=$(date +%s)
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$BIN/pip" install -q --no-deps "$src"
# Its runtime dependencies, and those of its OpenAI-compatible server (llama_cpp.server).
"$BIN/pip" install -q -c constraints.txt diskcache fastapi sse-starlette starlette-context pydantic-settings
echo "llama-cpp-python built in $(( $(date +%s) - start )) s"
touch "$MARK"
