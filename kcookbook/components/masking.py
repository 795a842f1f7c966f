"""Masked-language-model inputs: choose positions, corrupt them, and record what to predict.

BERT's recipe: select ``mask_selection_rate`` of the selectable tokens (at most
``mask_selection_length`` a row); of those, replace ``mask_token_rate`` with ``[MASK]``,
``random_token_rate`` with a random id and leave the rest unchanged.

    >>> gen = MaskedLMMaskGenerator(vocabulary_size=100, mask_selection_rate=0.5,
    ...                             mask_selection_length=4, mask_token_id=3, seed=0)
    >>> out = gen(np.array([[10, 11, 12, 13, 0, 0]]), padding_mask=np.array([[1, 1, 1, 1, 0, 0]]))
    >>> sorted(out)
    ['mask_ids', 'mask_positions', 'mask_weights', 'token_ids']
"""

import numpy as np


class MaskedLMMaskGenerator:
    def __init__(self, vocabulary_size, mask_selection_rate, mask_selection_length, mask_token_id,
                 unselectable_token_ids=(), mask_token_rate=0.8, random_token_rate=0.1, seed=None):
        if not 0.0 < mask_selection_rate <= 1.0:
            raise ValueError(f"mask_selection_rate must be in (0, 1], got {mask_selection_rate}.")
        if mask_token_rate + random_token_rate > 1.0:
            raise ValueError("mask_token_rate + random_token_rate must be at most 1.")
        self.vocabulary_size = vocabulary_size
        self.mask_selection_rate = mask_selection_rate
        self.mask_selection_length = mask_selection_length
        self.mask_token_id = mask_token_id
        self.unselectable_token_ids = tuple(unselectable_token_ids)
        self.mask_token_rate = mask_token_rate
        self.random_token_rate = random_token_rate
        self._rng = np.random.default_rng(seed)

    def __call__(self, token_ids, padding_mask=None):
        token_ids = np.array(token_ids, dtype=np.int32, copy=True)
        batch, length = token_ids.shape
        selectable = ~np.isin(token_ids, self.unselectable_token_ids)
        if padding_mask is not None:
            selectable &= np.asarray(padding_mask).astype(bool)
        positions = np.zeros((batch, self.mask_selection_length), np.int32)
        ids = np.zeros((batch, self.mask_selection_length), np.int32)
        weights = np.zeros((batch, self.mask_selection_length), np.float32)
        for row in range(batch):
            candidates = np.flatnonzero(selectable[row])
            if candidates.size == 0:
                continue
            count = max(1, int(round(candidates.size * self.mask_selection_rate)))
            count = min(count, self.mask_selection_length)
            chosen = np.sort(self._rng.choice(candidates, size=count, replace=False))
            positions[row, :count] = chosen
            ids[row, :count] = token_ids[row, chosen]
            weights[row, :count] = 1.0
            action = self._rng.random(count)
            to_mask = chosen[action < self.mask_token_rate]
            to_random = chosen[(action >= self.mask_token_rate)
                               & (action < self.mask_token_rate + self.random_token_rate)]
            token_ids[row, to_mask] = self.mask_token_id
            token_ids[row, to_random] = self._rng.integers(0, self.vocabulary_size, to_random.size)
        return {"token_ids": token_ids, "mask_positions": positions, "mask_ids": ids,
                "mask_weights": weights}
