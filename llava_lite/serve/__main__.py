"""`python -m llava_lite.serve --model DIR`: the same as `llava-lite serve`."""
from .cli import main

main()
