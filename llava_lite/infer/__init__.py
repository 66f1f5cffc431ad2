"""Inference: the one batched decoding loop (decode.py), the Assistant that chat, eval and serve
share (chat.py), and `llava-lite chat` (cli_chat.py)."""
