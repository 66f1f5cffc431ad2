"""The data path, from a raw record to a padded batch, in one direction:

    readers.py     LLaVA / ShareGPT / Alpaca / OpenAI / pair / text files -> Conversation (validated once, here)
    openai_format.py  the OpenAI chat format's turns and content parts (the OpenAI reader, preference prompts)
    streaming.py   webdataset shards -> Conversation (the same LLaVA or text reader), split by process/worker
    conversation.py  the one schema: messages (role + text) and their images
    images.py      opening images as RGB, with every failure a DataError; pad-to-square
    render.py      Conversation -> input_ids + labels from the tokenizer's chat template
    isolate.py     a record of independent questions -> one segment per question over a shared image prefix
    dataset.py     lazy rendering + image loading per sample; the right-padding collator
    mixture.py     weighted sources re-drawn every epoch; curriculum scores
    sampler.py     one-modality, length-grouped batches of an epoch's draw
    loader.py      the entry: `TrainData(cfg.data, ...)` reads and checks everything, then builds the loader
    rejects.py     bad records: one Reject each, counted per reason, reported together or skipped into rejects.jsonl
    packing.py     padding-free rows (position_ids restart per sample)
    templates.py   LLaVA's conversation templates by name (vicuna_v1, chatml, ...) as chat templates
    tags.py        the keyword skill tagger (the "tags" curriculum and the data tools' reports)

Nothing here imports the model: the loader takes the model's tokenizer and image transform.
"""
