"""The position axis of per-position patching grids.

Patches are put at the same position of a prompt and its counterpart (they have the same number of
tokens), and a grid's cell averages over prompts, so its position must mean the same thing in every
prompt: an index when all prompts have the same length, a named word position for IOI prompts
(IO, S1, S1+1, S2, END, as the IOI paper's ``word_idx``), and otherwise only END, each prompt's own
last token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from logitscope.errors import ArgumentError
from logitscope.inputs.pairs import IOI_POSITIONS, EncodedPairs

POSITION_MODES = ("auto", "index", "named", "end")


@dataclass(frozen=True)
class PositionAxis:
    mode: str  # "index", "named" or "end"
    labels: list[str]
    at: np.ndarray  # [n_positions, n_prompts]: the token index of each label in each prompt
    note: str = ""

    def __len__(self) -> int:
        return len(self.labels)


def position_axis(enc: EncodedPairs, mode: str = "auto") -> PositionAxis:
    """The axis for ``mode`` (``auto``: named positions for IOI prompts, else indices for prompts
    of one length, else END only, saying why)."""
    if mode not in POSITION_MODES:
        raise ArgumentError("positions", mode, f"use one of {', '.join(POSITION_MODES)}")
    n = enc.n
    end = enc.lengths - 1
    if mode == "auto":
        mode = "named" if enc.positions is not None else "index" if enc.equal_length else "end"
        note = "" if mode != "end" else (
            "the prompts differ in length and carry no named positions (IOI prompts do), so per-position grids "
            "have one position, END (each prompt's last token); give prompts of one length for a grid by index"
        )
    else:
        note = ""
    if mode == "named":
        if enc.positions is None:
            raise ArgumentError(
                "positions", mode, "named positions (IO, S1, S1+1, S2, END) exist only for IOI prompts whose names "
                "are single tokens found once (IO) and twice (S) in the prompt"
            )
        return PositionAxis("named", list(IOI_POSITIONS), np.stack([enc.positions[k] for k in IOI_POSITIONS]), note)
    if mode == "index":
        if not enc.equal_length:
            lo, hi = int(enc.lengths.min()), int(enc.lengths.max())
            raise ArgumentError(
                "positions", mode, f"the prompts have {lo} to {hi} tokens, so an index is not the same position in "
                "every prompt; use named positions (IOI prompts) or end, or prompts of one length"
            )
        T = int(enc.lengths[0])
        return PositionAxis("index", [str(i) for i in range(T)], np.repeat(np.arange(T)[:, None], n, axis=1), note)
    return PositionAxis("end", ["END"], end[None].copy(), note)
