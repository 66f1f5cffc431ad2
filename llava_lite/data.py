"""Data loading entry point: conversation file readers and image loading.

The code lives in `readers` (file formats -> Conversation) and `images` (opening images as RGB).
"""
from .conversation import IMAGE_PLACEHOLDER, Conversation, DataError, Message
from .images import decode_data_url, expand_to_square, load_image, to_rgb
from .readers import FORMATS, Bad, iter_conversations, read_conversations

__all__ = [
    "IMAGE_PLACEHOLDER",
    "Bad",
    "Conversation",
    "DataError",
    "FORMATS",
    "Message",
    "decode_data_url",
    "expand_to_square",
    "iter_conversations",
    "load_image",
    "read_conversations",
    "to_rgb",
]
