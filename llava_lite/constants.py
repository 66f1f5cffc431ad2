"""Names shared by the data path, the model and the export formats (LLaVA keeps them in constants.py too)."""

IMAGE_TOKEN = "<image>"  # the placeholder a conversation's text carries for each image
IGNORE_INDEX = -100  # the label of every position that is not supervised (prompt, image, padding)
SHORT_ANSWER = "Answer the question using a single word or phrase."  # LLaVA-1.5's short-answer VQA prompt
# what `--model` of chat, eval and serve takes (interop/sources.py model_dir)
MODEL_ARG = "a llava-lite model directory, or a llava-hf / LLaVA llava_llama one (imported once, cached)"
