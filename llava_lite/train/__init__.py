"""Training: the recipe (setup -> train -> finish) and what it is made of.

    recipe.py       `llava-lite train`: the Trainer
    build.py        the model a run starts from: model.init_from resolved, loaded, prepared for the stage
    stages.py       a stage as data: what trains, render mode, lr groups, checkpoint parts
    optim.py        AdamW groups from the stage, cosine schedule
    checkpoints.py  atomic, resumable checkpoints
    distributed.py  launch checks, the empty image batch, gathered state, DeepSpeed
    metrics.py      metrics.jsonl and the loss plot
    kl.py           KL to the base model
    dry_run.py      --dry-run: memory and step estimates from configs alone
"""
