"""Packers: lists of token ids → fixed-length, model-ready integer arrays.

They work on Python lists (what a tokenizer returns) and give numpy arrays, so the same code serves
eager calls and, through a preprocessor's bridge, ``tf.data``.

    >>> packer = StartEndPacker(sequence_length=6, start_value=1, end_value=2, pad_value=0)
    >>> packer([[5, 6, 7], [8]])["token_ids"].tolist()
    [[1, 5, 6, 7, 2, 0], [1, 8, 2, 0, 0, 0]]
    >>> pair = MultiSegmentPacker(sequence_length=8, start_value=1, end_value=2)
    >>> out = pair(([[5, 6, 7]], [[8, 9]]))
    >>> out["token_ids"].tolist(), out["segment_ids"].tolist()
    ([[1, 5, 6, 7, 2, 8, 9, 2]], [[0, 0, 0, 0, 0, 1, 1, 1]])
"""

import numpy as np


class StartEndPacker:
    """Adds optional start/end ids, truncates to ``sequence_length`` and pads.

    Truncation keeps the start and end ids and drops tokens from the end of the text. The result is
    a dict of ``token_ids`` and ``padding_mask`` (1 on real tokens, 0 on padding), both int32.
    ``sequence_length=None`` pads to the longest row of the batch.
    """

    def __init__(self, sequence_length=None, start_value=None, end_value=None, pad_value=0,
                 padding_side="right"):
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}.")
        self.sequence_length = sequence_length
        self.start_value = start_value
        self.end_value = end_value
        self.pad_value = pad_value
        self.padding_side = padding_side

    def __call__(self, ids_batch, sequence_length=None, add_start_value=True, add_end_value=True):
        start = [self.start_value] if add_start_value and self.start_value is not None else []
        end = [self.end_value] if add_end_value and self.end_value is not None else []
        length = sequence_length or self.sequence_length
        if length is None:
            length = max((len(r) for r in ids_batch), default=0) + len(start) + len(end)
        room = length - len(start) - len(end)
        if room < 0:
            raise ValueError(f"sequence_length={length} leaves no room for the start/end tokens.")
        token_ids = np.full((len(ids_batch), length), self.pad_value, dtype=np.int32)
        padding_mask = np.zeros((len(ids_batch), length), dtype=np.int32)
        for row, ids in enumerate(ids_batch):
            packed = start + list(ids[:room]) + end
            if self.padding_side == "right":
                token_ids[row, : len(packed)] = packed
                padding_mask[row, : len(packed)] = 1
            else:
                token_ids[row, length - len(packed):] = packed
                padding_mask[row, length - len(packed):] = 1
        return {"token_ids": token_ids, "padding_mask": padding_mask}

    def get_config(self):
        return {"sequence_length": self.sequence_length, "start_value": self.start_value,
                "end_value": self.end_value, "pad_value": self.pad_value,
                "padding_side": self.padding_side}


class MultiSegmentPacker:
    """Packs one or more segments as ``[start] a [sep] b [sep] … [pad]…`` with segment ids.

    Args:
        sequence_length: total length, special tokens included.
        start_value, end_value: ids put first and after every segment (BERT: [CLS], [SEP]).
        sep_value: separator between segments; defaults to ``end_value``.
        pad_value: id used for padding.
        truncate: ``"round_robin"`` takes one token from each segment in turn while there is room
            (BERT's choice for pairs); ``"waterfall"`` fills the first segment first.

    Returns a dict of int32 arrays: ``token_ids``, ``segment_ids``, ``padding_mask``.
    """

    def __init__(self, sequence_length, start_value, end_value, sep_value=None, pad_value=0,
                 truncate="round_robin"):
        if truncate not in ("round_robin", "waterfall"):
            raise ValueError(f"truncate must be 'round_robin' or 'waterfall', got {truncate!r}.")
        self.sequence_length = sequence_length
        self.start_value = start_value
        self.end_value = end_value
        self.sep_value = end_value if sep_value is None else sep_value
        self.pad_value = pad_value
        self.truncate = truncate

    def _budget(self, lengths, room):
        if self.truncate == "waterfall":
            budget = []
            for n in lengths:
                take = min(n, room)
                budget.append(take)
                room -= take
            return budget
        budget = [0] * len(lengths)
        while room > 0:
            progressed = False
            for i, n in enumerate(lengths):
                if room > 0 and budget[i] < n:
                    budget[i] += 1
                    room -= 1
                    progressed = True
            if not progressed:
                break
        return budget

    def __call__(self, segments, sequence_length=None):
        if not isinstance(segments, (tuple, list)) or not segments:
            raise ValueError("MultiSegmentPacker takes a tuple of segments, each a batch of id lists.")
        batch_size = len(segments[0])
        if any(len(s) != batch_size for s in segments):
            raise ValueError(f"All segments need the same batch size; got {[len(s) for s in segments]}.")
        length = sequence_length or self.sequence_length
        num_special = 1 + len(segments)
        room = length - num_special
        if room < 0:
            raise ValueError(f"sequence_length={length} is too short for {len(segments)} segments.")
        token_ids = np.full((batch_size, length), self.pad_value, dtype=np.int32)
        segment_ids = np.zeros((batch_size, length), dtype=np.int32)
        padding_mask = np.zeros((batch_size, length), dtype=np.int32)
        for row in range(batch_size):
            pieces = [segments[s][row] for s in range(len(segments))]
            budget = self._budget([len(p) for p in pieces], room)
            ids, segs = [self.start_value], [0]
            for s, (piece, take) in enumerate(zip(pieces, budget)):
                sep = self.end_value if s == len(pieces) - 1 else self.sep_value
                ids += list(piece[:take]) + [sep]
                segs += [s] * (take + 1)
            token_ids[row, : len(ids)] = ids
            segment_ids[row, : len(ids)] = segs
            padding_mask[row, : len(ids)] = 1
        return {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}

    def get_config(self):
        return {"sequence_length": self.sequence_length, "start_value": self.start_value,
                "end_value": self.end_value, "sep_value": self.sep_value,
                "pad_value": self.pad_value, "truncate": self.truncate}


def pad_prompts(ids, sequence_length, pad_value=0):
    """Lists of prompt ids → right-padded int32 ``token_ids`` and ``padding_mask`` arrays."""
    longest = max((len(row) for row in ids), default=0)
    if longest > sequence_length:
        raise ValueError(
            f"A prompt has {longest} tokens, more than max_length={sequence_length}. Pass a larger "
            "max_length (up to the model's max_sequence_length) or shorten the prompt; kcookbook does "
            "not silently truncate prompts.")
    if any(len(row) == 0 for row in ids):
        raise ValueError("An empty prompt has no token to continue from: give it at least one token "
                         "(e.g. the start token).")
    token_ids = np.full((len(ids), sequence_length), pad_value, dtype="int32")
    padding_mask = np.zeros((len(ids), sequence_length), dtype="int32")
    for row, prompt in enumerate(ids):
        token_ids[row, :len(prompt)] = prompt
        padding_mask[row, :len(prompt)] = 1
    return token_ids, padding_mask
