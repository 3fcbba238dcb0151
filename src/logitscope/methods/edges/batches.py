"""Prompts as token ids (:class:`EdgeData`) and the right-padded batches the edge runs take (:class:`Batch`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from logitscope.errors import InputError


@dataclass
class EdgeData:
    """Token ids of each prompt (BOS already prepended) and its counterpart (same length), and
    the clean answers' ids ``[N]`` or answer sets ``[N, K]`` padded with ``-1``."""

    clean: list[list[int]]
    corrupted: list[list[int]] | None
    correct: np.ndarray
    incorrect: np.ndarray
    pad_id: int = 0

    def __post_init__(self) -> None:
        self.correct = np.asarray(self.correct, dtype=np.int64)
        self.incorrect = np.asarray(self.incorrect, dtype=np.int64)
        if not len(self.correct) == len(self.incorrect) == len(self.clean):
            raise InputError(f"{len(self.clean)} prompts but {len(self.correct)} correct and {len(self.incorrect)} "
                             "incorrect answers: give one of each per prompt")
        if self.corrupted is not None:
            if len(self.corrupted) != len(self.clean):
                raise InputError(f"{len(self.corrupted)} counterparts for {len(self.clean)} prompts: give one each")
            for i, (c, x) in enumerate(zip(self.clean, self.corrupted)):
                if len(c) != len(x):
                    raise InputError(f"prompt {i}: its counterpart is {len(x)} tokens but the prompt is {len(c)}; "
                                     "a counterpart must have the same number of tokens so that positions align")

    @property
    def n(self) -> int:
        return len(self.clean)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(c) for c in self.clean], dtype=np.int64)

    def order(self) -> np.ndarray:
        """The prompts longest first (stable): batches of similar lengths, the largest batch first
        (so that a batch size too large fails at once)."""
        return np.argsort(-self.lengths, kind="stable")

    def batches(self, batch_size: int, device: torch.device, ranks=None) -> Iterator["Batch"]:
        """Batches of ``batch_size`` prompts in :meth:`order`; with ``ranks``, only this rank's (each
        batch the one a single process would run)."""
        order = self.order()
        for i, start in enumerate(range(0, self.n, batch_size)):
            if ranks is None or ranks.mine(i):
                yield Batch.of(self, order[start:start + batch_size], device)


@dataclass
class Batch:
    """Right-padded ids of some prompts, their mask, lengths and answers."""

    index: np.ndarray
    clean: torch.Tensor
    corrupted: torch.Tensor | None
    mask: torch.Tensor
    lengths: torch.Tensor
    correct: torch.Tensor
    incorrect: torch.Tensor

    @classmethod
    def of(cls, data: EdgeData, index: Sequence[int], device: torch.device) -> "Batch":
        index = np.asarray(list(index))
        lengths = [len(data.clean[i]) for i in index]
        width = max(lengths)

        def pad(rows):
            return torch.tensor([r + [data.pad_id] * (width - len(r)) for r in rows], dtype=torch.long, device=device)

        mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths], dtype=torch.long, device=device)
        return cls(index, pad([data.clean[i] for i in index]),
                   None if data.corrupted is None else pad([data.corrupted[i] for i in index]), mask,
                   torch.tensor(lengths, device=device), torch.as_tensor(data.correct[index], device=device),
                   torch.as_tensor(data.incorrect[index], device=device))

    @property
    def size(self) -> int:
        return len(self.index)
