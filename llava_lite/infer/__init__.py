"""Inference: the one batched decoding loop (decode.py), the Assistant that chat, eval and serve
share (chat.py), `llava-lite chat` (cli_chat.py), and the OpenAI-compatible client that the judge and
the data tools' teachers call (openai_client.py)."""
