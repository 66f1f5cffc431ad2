"""Names shared by the data path, the model and the export formats (LLaVA keeps them in constants.py too)."""

IMAGE_TOKEN = "<image>"  # the placeholder a conversation's text carries for each image
IGNORE_INDEX = -100  # the label of every position that is not supervised (prompt, image, padding)
SHORT_ANSWER = "Answer the question using a single word or phrase."  # LLaVA-1.5's short-answer VQA prompt
