"""`python -m llava_lite.serve --model DIR`: the same as `llava-lite serve`."""
from llava_lite.serve.cli import main

main()
