"""The data package's one entry for training: from the data config to each epoch's batches.

    data = TrainData(cfg.data, batch_size=16, seed=0, mode="chat", images=True, rank=0, world_size=1)
    # ... every record has been read and checked; now build the model, then:
    data.build(model)                     # data.loader: a DataLoader of padded batches
    data.epoch_batches(epoch)             # batches this process takes in that epoch

File sources form a `Mixture` (each record once, re-drawn by weight every epoch from
(seed, epoch)) cut into one-modality, length-grouped batches by the sampler; shard sources are
streamed (`streaming.ShardStream`). Either way an epoch's batches are a function of (seed, epoch)
and the process layout alone, which is what makes `--resume` exact.
"""
from __future__ import annotations

import math

from torch.utils.data import DataLoader

from llava_lite.config import ConfigError, DataConfig
from llava_lite.data.conversation import Conversation
from llava_lite.data.dataset import Collator, ConversationDataset
from llava_lite.data.mixture import Mixture, bad_records_error, load_mixture, read_sources, schedule
from llava_lite.data.rejects import Rejects
from llava_lite.data.sampler import ModalityLengthBatchSampler
from llava_lite.data.streaming import ShardStream, expand_shards
from llava_lite.log import logger


def source_kind(sources, key: str = "data.sources") -> str:
    """"files" or "shards": check that every source names exactly one of `path` / `shards` and
    that a run does not mix the two (a stream cannot be weighted against files)."""
    if not sources:
        raise ConfigError(f"{key} is empty: give at least one {{path: ...}} or {{shards: ...}} source")
    kinds = []
    for i, src in enumerate(sources):
        if bool(src.path) == bool(src.shards):
            raise ConfigError(f"{key}[{i}] needs exactly one of 'path' (a conversation file) or 'shards' "
                              f"(webdataset shards); got path={src.path!r}, shards={src.shards!r}")
        weights = schedule(src.weight)
        if not weights or any(not w >= 0 or math.isinf(w) for w in weights):
            raise ConfigError(f"{key}[{i}].weight must be a finite number >= 0 or a list of them (one per epoch), "
                              f"got {src.weight!r}")
        if src.shards:
            if src.weight != 1.0:
                raise ConfigError(f"{key}[{i}].weight={src.weight}: shard sources are streamed once per epoch and "
                                  "cannot be weighted; write the mixture you want into the shards, or use files")
            if src.image_folder:
                raise ConfigError(f"{key}[{i}].image_folder: shards carry their own images")
        kinds.append("shards" if src.shards else "files")
    if len(set(kinds)) > 1:
        raise ConfigError(f"{key} mixes conversation files and shard streams; a run reads one kind "
                          f"(files at {[i for i, k in enumerate(kinds) if k == 'files']}, "
                          f"shards at {[i for i, k in enumerate(kinds) if k == 'shards']})")
    return kinds[0]


def check_data(data: DataConfig) -> str:
    """Check the data config before anything is read or built; returns the sources' kind."""
    kind = source_kind(data.sources)
    if kind == "shards" and data.curriculum:
        raise ConfigError(f"data.curriculum={data.curriculum!r} orders a whole epoch; shard streams cannot use it")
    isolated = [i for i, src in enumerate(data.sources) if src.isolate_turns]
    if isolated and kind == "shards":
        raise ConfigError(f"data.sources[{isolated[0]}].isolate_turns: shard streams cannot isolate turns yet; "
                          "use a conversation file (path)")
    if isolated and data.packing:
        raise ConfigError(f"data.sources[{isolated[0]}].isolate_turns cannot be combined with data.packing: a packed "
                          "row has one attention layout per sample; turn one of them off")
    if data.shuffle_buffer < 0:
        raise ConfigError(f"data.shuffle_buffer must be >= 0, got {data.shuffle_buffer}")
    if not 0 <= data.max_bad_fraction <= 1:
        raise ConfigError(f"data.max_bad_fraction must be between 0 and 1 (a fraction of the records), "
                          f"got {data.max_bad_fraction}")
    if data.eval_sources and source_kind(data.eval_sources, "data.eval_sources") == "shards":
        raise ConfigError("data.eval_sources must be conversation files ('path'), not shards")
    return kind


def dataset_for(model, conversations: list[Conversation], max_length: int, mode: str,
                system_prompt: str | None, pairs: bool = False) -> ConversationDataset:
    """Conversations rendered with a model's tokenizer and image preprocessing."""
    return ConversationDataset(
        conversations, model.tokenizer, model.vision.image_to_pixels, image_token_id=model.image_token_id,
        image_seq_len=model.image_seq_len, max_length=max_length, mode=mode, system_prompt=system_prompt,
        pairs=pairs, image_tokens=None if model.vision.anyres is None else model.image_tokens,
    )


def check_pairs(data: DataConfig, kind: str) -> None:
    """Preference training renders two rows per record, padded: no packing, isolation or shards."""
    if data.packing:
        raise ConfigError("data.packing cannot be used for preference pairs: a pair's chosen and rejected rows are "
                          "scored side by side; set data.packing=false")
    if kind == "shards":
        raise ConfigError("preference pairs are read from conversation files ('path'), not shards")
    isolated = [i for i, src in enumerate(data.sources) if src.isolate_turns]
    if isolated:
        raise ConfigError(f"data.sources[{isolated[0]}].isolate_turns cannot be used for preference pairs")



class TrainData:
    """The training (and in-training eval) data of one process of `world_size`."""

    def __init__(self, data: DataConfig, *, batch_size: int, seed: int, mode: str, images: bool,
                 group_by_length: bool = True, rank: int = 0, world_size: int = 1, pairs: bool = False):
        self.cfg, self.batch_size, self.seed, self.mode = data, batch_size, seed, mode
        self.group = group_by_length
        self.rank, self.world_size = rank, world_size
        self.images, self.pairs = images, pairs
        self.kind = check_data(data)
        if pairs:
            check_pairs(data, self.kind)
        self.mixture: Mixture | None = None
        self.shards: list[str] = []
        # Every record of every source is read and checked now, before any weights load; all bad
        # ones are reported together (data.on_bad_record=error) or dropped into rejects.jsonl (skip).
        bad: list[dict] = []
        evals, bad_eval = read_sources(data.eval_sources, images, data.allow_absolute_image_paths, "data.eval_sources",
                                       pairs=pairs)
        if self.kind == "files":
            self.mixture = load_mixture(data.sources, seed, data.curriculum, images, on_bad="skip",
                                        allow_absolute=data.allow_absolute_image_paths, rejects=bad, pairs=pairs)
        else:
            self.shards = [p for i, src in enumerate(data.sources)
                           for p in expand_shards(src.shards, f"data.sources[{i}].shards")]
        bad += bad_eval
        if bad and data.on_bad_record == "error":
            raise bad_records_error(bad)
        self.eval_conversations = [c for cs in evals for c in cs]
        records = (len(self.mixture.conversations) if self.mixture else 0) + len(self.eval_conversations) + len(bad)
        self.rejects = Rejects(bad, records, data.max_bad_fraction)
        self.rejects.check()
        self.sampler: ModalityLengthBatchSampler | None = None
        self.stream: ShardStream | None = None
        self.loader: DataLoader | None = None  # set by build(); the trainer may swap in a prepared one

    def _dataset(self, model, conversations: list[Conversation]) -> ConversationDataset:
        return dataset_for(model, conversations, self.cfg.max_length, self.mode, self.cfg.system_prompt, self.pairs)

    def build(self, model) -> DataLoader:
        """The training DataLoader (also kept as `self.loader`): files through the mixture and
        sampler, or the shard stream."""
        self.loader = self._build(model)
        return self.loader

    def _build(self, model) -> DataLoader:
        collate = Collator(model.tokenizer.pad_token_id)
        if self.cfg.packing:  # padding-free packing of each batch's samples (data/packing.py)
            from llava_lite.data.packing import PackingCollator

            collate = PackingCollator(model.tokenizer.pad_token_id, self.cfg.max_length)
        workers = self.cfg.num_workers
        if self.mixture is None:
            self.stream = ShardStream(
                self.shards, self._dataset(model, []), batch_size=self.batch_size, seed=self.seed,
                shuffle_buffer=self.cfg.shuffle_buffer, rank=self.rank, world_size=self.world_size,
                num_workers=workers, text_only=not self.images,
            )
            self.rejects.total += len(self.stream)  # image defects in shards are found as they stream
            logger.info(f"data: {len(self.stream)} samples streamed from {len(self.shards)} shard(s) by "
                        f"{self.world_size} process(es) x {self.stream.readers} reader(s); shuffle buffer "
                        f"{self.cfg.shuffle_buffer}; batches mix modalities (no length grouping for streams)")
            if self.stream.epoch_batches(0) == 0:
                raise ConfigError(f"{len(self.shards)} shard(s) cannot feed {self.world_size} process(es): some "
                                  "process gets no shard; write more, smaller shards "
                                  "(llava-lite data shards --maxcount)")
            return DataLoader(self.stream, batch_size=self.batch_size, num_workers=workers, collate_fn=collate)
        mix, curriculum = self.mixture, self.cfg.curriculum
        logger.info(f"data: {mix.describe()}" + (f", curriculum {curriculum!r}" if curriculum else ""))
        ds = self._dataset(model, mix.conversations)
        group = self.group
        lengths = ds.lengths() if group else [0] * len(ds)
        has_image = ds.has_image() if group else [False] * len(ds)
        # A curriculum keeps the mixture's easy-to-hard order: batches are cut in order, not shuffled.
        self.sampler = ModalityLengthBatchSampler(lengths, has_image, self.batch_size, seed=self.seed,
                                                  shuffle=curriculum is None, epoch_indices=mix.epoch)
        return DataLoader(ds, batch_sampler=self.sampler, collate_fn=collate, num_workers=workers)

    def build_eval(self, model) -> DataLoader | None:
        """Eval sources: every record once, in file order, one modality per batch."""
        if not self.eval_conversations:
            return None
        ds = self._dataset(model, self.eval_conversations)
        sampler = ModalityLengthBatchSampler(ds.lengths(), ds.has_image(), self.batch_size, shuffle=False)
        return DataLoader(ds, batch_sampler=sampler, collate_fn=Collator(model.tokenizer.pad_token_id),
                          num_workers=self.cfg.num_workers)

    def epoch_batches(self, epoch: int) -> int:
        """Batches this process takes in `epoch` (a mixture's epochs can differ by a batch or so)."""
        if self.stream is not None:
            return self.stream.epoch_batches(epoch)
        self.sampler.set_epoch(epoch)
        return len(self.loader)
