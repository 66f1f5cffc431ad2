"""What the CLIP encoder learned: linear probes on patch tokens, retrieval, zero-shot.

The LLM sees the penultimate layer's patch tokens, so the probes read exactly those:
- object probes: the mean token over an object's patches -> colour / shape / size,
  fit on train objects, scored on test objects (and on the held-out colour-shape pairs alone);
- patch probe: each token -> the shape (or background) under the patch centre, i.e. *where*
  each shape is, since the token's index is its position (`patch_shape_map_on_objects` scores
  the patches inside boxes only; background is most patches), and each token -> its own grid
  position (`patch_position`, 64-way);
- image->caption recall@1 among 100 test images, and zero-shot (colour, shape) classification
  of single-object test images against every "a {colour} {shape}." prompt.
Probes are ridge regressions onto one-hot targets (closed form, deterministic, a second or two).
"""
from __future__ import annotations

import numpy as np
import torch

from llava_lite.demo.world import COLORS, HELDOUT_PAIRS, SHAPES


@torch.no_grad()
def patch_tokens(visual, pixels: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Penultimate-layer patch tokens, what the LLM sees. # [N, 3, H, W] -> [N, L, D]"""
    out = []
    for i in range(0, len(pixels), batch):
        r = visual.forward_intermediates(pixels[i:i + batch], indices=[-2], output_fmt="NLC", intermediates_only=True)
        out.append(r["image_intermediates"][0].float())
    return torch.cat(out)


def _object_rows(tokens: torch.Tensor, images: list[dict], objects: dict, image_size: int, patch: int):
    """Mean token over the patches whose centre lies in each object's box, and its labels."""
    grid = image_size // patch
    centres = (torch.arange(grid) + 0.5) * patch
    feats, labels = [], []
    for n, im in enumerate(images):
        for o in objects[im["id"]]:
            x, y, w, h = o["bbox"]
            cols = ((centres >= x) & (centres < x + w)).nonzero().flatten()
            rows = ((centres >= y) & (centres < y + h)).nonzero().flatten()
            if len(cols) == 0 or len(rows) == 0:  # tiny box between patch centres: nearest patch
                rows = torch.tensor([min(int((y + h / 2) // patch), grid - 1)])
                cols = torch.tensor([min(int((x + w / 2) // patch), grid - 1)])
            idx = (rows[:, None] * grid + cols[None, :]).flatten()
            feats.append(tokens[n, idx].mean(0))
            labels.append((o["color"], o["shape"], o["size"]))
    return torch.stack(feats), labels


def patch_labels(images: list[dict], objects: dict, image_size: int, patch: int) -> torch.Tensor:
    """Per patch, the (shape, colour, size) of the box under its centre, 1-based; 0 = background.
    # -> [N, L, 3] with L = (image_size // patch) ** 2, patches in row-major order"""
    grid = image_size // patch
    centres = (torch.arange(grid) + 0.5) * patch
    out = torch.zeros(len(images), grid * grid, 3, dtype=torch.long)
    colors, sizes = list(COLORS), ["small", "large"]
    for n, im in enumerate(images):
        for o in objects[im["id"]]:
            x, y, w, h = o["bbox"]
            rows, cols = (centres >= y) & (centres < y + h), (centres >= x) & (centres < x + w)
            inside = (rows[:, None] & cols[None, :]).flatten()
            out[n, inside] = torch.tensor([SHAPES.index(o["shape"]) + 1, colors.index(o["color"]) + 1,
                                           sizes.index(o["size"]) + 1])
    return out


def ridge_probe(x_tr: torch.Tensor, y_tr: list, x_te: torch.Tensor, y_te: list, lam: float = 1e-2) -> np.ndarray:
    """Fit a linear classifier by ridge regression onto one-hot labels; per-sample correctness on test."""
    classes = sorted(set(y_tr) | set(y_te))
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    a = torch.cat([(x_tr - mu) / sd, torch.ones(len(x_tr), 1)], 1).double()
    b = torch.cat([(x_te - mu) / sd, torch.ones(len(x_te), 1)], 1).double()
    t = torch.zeros(len(y_tr), len(classes), dtype=torch.float64)
    t[torch.arange(len(y_tr)), torch.tensor([classes.index(v) for v in y_tr])] = 1
    w = torch.linalg.solve(a.T @ a + lam * len(a) * torch.eye(a.shape[1], dtype=torch.float64), a.T @ t)
    pred = (b @ w).argmax(1).numpy()
    return pred == np.array([classes.index(v) for v in y_te])


def probe_patch_features(tok_tr, ims_tr, objs_tr, tok_te, ims_te, objs_te, image_size: int, patch: int) -> dict:
    """Object-level colour/shape/size probes and the patch-level shape map probe (accuracies)."""
    f_tr, l_tr = _object_rows(tok_tr, ims_tr, objs_tr, image_size, patch)
    f_te, l_te = _object_rows(tok_te, ims_te, objs_te, image_size, patch)
    heldout = np.array([(c, s) in HELDOUT_PAIRS for c, s, _ in l_te])
    out = {}
    for k, name in enumerate(("color", "shape", "size")):
        ok = ridge_probe(f_tr, [l[k] for l in l_tr], f_te, [l[k] for l in l_te])
        out[f"object_{name}"] = float(ok.mean())
        out[f"object_{name}_heldout_pairs"] = float(ok[heldout].mean()) if heldout.any() else None
    pl_tr = patch_labels(ims_tr, objs_tr, image_size, patch)[..., 0].flatten().tolist()
    pl_te = patch_labels(ims_te, objs_te, image_size, patch)[..., 0].flatten().tolist()
    d = tok_tr.shape[-1]
    ok = ridge_probe(tok_tr.reshape(-1, d), pl_tr, tok_te.reshape(-1, d), pl_te)
    fg = np.array(pl_te) > 0
    out["patch_shape_map"] = float(ok.mean())
    out["patch_shape_map_on_objects"] = float(ok[fg].mean())
    n_pos = tok_tr.shape[1]  # each token -> its own (row, col): the position survives the layers
    pos_tr = list(range(n_pos)) * len(tok_tr)
    pos_te = list(range(n_pos)) * len(tok_te)
    out["patch_position"] = float(ridge_probe(tok_tr.reshape(-1, d), pos_tr, tok_te.reshape(-1, d), pos_te).mean())
    return out


@torch.no_grad()
def retrieval_and_zero_shot(model, tokenizer, pixels, captions: list[str], images: list[dict], objects: dict) -> dict:
    """Image->caption recall@1 in chunks of 100; zero-shot (colour, shape) on single-object images."""
    img = torch.cat([model.encode_image(pixels[i:i + 256], normalize=True) for i in range(0, len(pixels), 256)])
    txt = torch.cat([model.encode_text(tokenizer(captions[i:i + 256]), normalize=True)
                     for i in range(0, len(captions), 256)])
    hits, chunk = [], min(100, len(img))
    for i in range(0, len(img) - chunk + 1, chunk):
        sims = img[i:i + chunk] @ txt[i:i + chunk].T
        hits.append((sims.argmax(1) == torch.arange(len(sims))).float())
    classes = [(c, s) for c in COLORS for s in SHAPES]
    cls_txt = model.encode_text(tokenizer([f"a {c} {s}." for c, s in classes]), normalize=True)
    single = [n for n, im in enumerate(images) if len(objects[im["id"]]) == 1]
    out = {"retrieval_r1_of_100": float(torch.cat(hits).mean())}
    if single:
        pred = (img[single] @ cls_txt.T).argmax(1)
        truth = [(objects[images[n]["id"]][0]["color"], objects[images[n]["id"]][0]["shape"]) for n in single]
        both = np.array([classes[int(p)] == t for p, t in zip(pred, truth)])
        heldout = np.array([t in HELDOUT_PAIRS for t in truth])
        out["zero_shot_color_shape"] = float(both.mean())
        out["zero_shot_color_shape_heldout_pairs"] = float(both[heldout].mean()) if heldout.any() else None
    return out
