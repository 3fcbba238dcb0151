"""Circuits as data: the IOI paper's head classes in GPT-2 small, and circuits read from a file.

Wang et al. 2022 (arXiv 2211.00593), §3 and Fig. 2, with name movers split from backup name
movers as ARENA 1.4.1's ``CIRCUIT`` does (26 heads). The report marks these heads on the head
heatmap and in the top-heads table, so a reader can see at a glance which of the paper's heads
the attribution recovers.

A :class:`Circuit` is a named set of heads in classes, each class kept at some positions: the
paper's (:func:`ioi_circuit`, with its knockout positions and minimality sets), or one read by
:func:`load_circuit` from a small text file or an inline spec (:data:`CIRCUIT_FORMAT`).
:mod:`logitscope.methods.circuits` measures its faithfulness, completeness and minimality.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from logitscope.errors import InputError

# (layer, head) of each class, in the paper's order of importance within the class.
IOI_HEAD_CLASSES: dict[str, tuple[tuple[int, int], ...]] = {
    "name mover": ((9, 9), (10, 0), (9, 6)),
    "negative name mover": ((10, 7), (11, 10)),
    "backup name mover": ((10, 10), (10, 6), (10, 2), (10, 1), (11, 2), (9, 7), (9, 0), (11, 9)),
    "S-inhibition": ((7, 3), (7, 9), (8, 6), (8, 10)),
    "induction": ((5, 5), (5, 8), (5, 9), (6, 9)),
    "duplicate token": ((0, 1), (0, 10), (3, 0)),
    "previous token": ((2, 2), (4, 11)),
}

# Short tags for heatmap cells.
IOI_CLASS_ABBREV: dict[str, str] = {
    "name mover": "NM",
    "negative name mover": "NNM",
    "backup name mover": "BNM",
    "S-inhibition": "SI",
    "induction": "Ind",
    "duplicate token": "DT",
    "previous token": "PT",
}

GPT2_SMALL_NAMES = frozenset({"gpt2", "gpt2-small", "openai-community/gpt2"})

_HEAD_TO_CLASS: dict[tuple[int, int], str] = {
    head: name for name, heads in IOI_HEAD_CLASSES.items() for head in heads
}


def _info(result_or_model_info: Any) -> tuple[str, str, int, int]:
    """``(model, family, n_layers, n_heads)`` from a result-like object or a mapping."""
    src = result_or_model_info
    get = src.get if isinstance(src, dict) else lambda k, d=None: getattr(src, k, d)
    model, family = str(get("model", "") or ""), str(get("family", "") or "")
    return model, family, int(get("n_layers", 0) or 0), int(get("n_heads", 0) or 0)


def is_gpt2_small(result_or_model_info: Any) -> bool:
    """True for GPT-2 small itself: a 12 × 12 ``gpt2``-family model named ``gpt2`` (or an alias, or a
    local folder of that name). Other checkpoints of the same shape (random, fine-tuned) are not
    GPT-2 small, and the paper's head classes say nothing about them."""
    model, family, n_layers, n_heads = _info(result_or_model_info)
    name = re.sub(r"\s*\(.*\)$", "", model.strip()).rstrip("/")  # "gpt2 (synthetic demo data)" -> "gpt2"
    named = name in GPT2_SMALL_NAMES or name.rsplit("/", 1)[-1] in GPT2_SMALL_NAMES
    return named and family in ("gpt2", "") and (n_layers, n_heads) == (12, 12)


def ioi_head_class(result_or_model_info: Any, layer: int, head: int) -> str | None:
    """The IOI paper's class of head ``layer.head`` in GPT-2 small, or ``None`` (also for other models)."""
    if not is_gpt2_small(result_or_model_info):
        return None
    return _HEAD_TO_CLASS.get((int(layer), int(head)))


def known_circuit(result_or_model_info: Any) -> dict[tuple[int, int], str] | None:
    """Every classified head, ``{(layer, head): class}``, when the model is GPT-2 small; else ``None``."""
    if not is_gpt2_small(result_or_model_info):
        return None
    return dict(_HEAD_TO_CLASS)


# ---------------------------------------------------------------------------------------------- circuits as data
# A circuit is a named set of heads in classes, each head kept at some positions. The IOI paper's
# knockouts keep each class at the position it acts at (its code's RELEVANT_TOKENS, ARENA 1.4.1's
# SEQ_POS_TO_KEEP): name movers, backup and negative name movers and S-inhibition heads at END,
# induction and duplicate-token heads at S2, previous-token heads at S1+1.
IOI_CLASS_POSITIONS: dict[str, str] = {
    "name mover": "END",
    "negative name mover": "END",
    "backup name mover": "END",
    "S-inhibition": "END",
    "induction": "S2",
    "duplicate token": "S2",
    "previous token": "S1+1",
}

# The IOI paper's minimality sets (App. K, Fig. 20) as its released code builds them (redwoodresearch/
# Easy-Transformer, easy_transformer/minimality.py): the score of head v is |F(C \ (K ∪ {v})) − F(C \ K)|
# with this K. A name mover or backup name mover's K is the name movers before it in the code's order
# of importance (9.9, 10.0, 9.6, 10.10, 10.6, 10.2, 10.1, 11.2, 9.7, 9.0, 11.9), except 9.0 and 11.9,
# whose K is every other name mover, backup or not, and both negative name movers; 5.8's and 5.9's K
# is the negative name movers; every other head's K is the rest of its class. ARENA 1.4.1's
# K_FOR_EACH_COMPONENT differs for all eight backup name movers (another order, and only the
# three name movers with the other of 9.0 / 11.9): the paper's code is taken.
_NAME_MOVER_ORDER = ((9, 9), (10, 0), (9, 6), (10, 10), (10, 6), (10, 2), (10, 1), (11, 2), (9, 7), (9, 0), (11, 9))
IOI_MINIMALITY_K: dict[tuple[int, int], tuple[tuple[int, int], ...]] = {
    **{head: _NAME_MOVER_ORDER[:i] for i, head in enumerate(_NAME_MOVER_ORDER)},
    (9, 0): tuple(h for h in _NAME_MOVER_ORDER if h != (9, 0)) + ((10, 7), (11, 10)),
    (11, 9): tuple(h for h in _NAME_MOVER_ORDER if h != (11, 9)) + ((10, 7), (11, 10)),
    (10, 7): ((11, 10),),
    (11, 10): ((10, 7),),
    (8, 10): ((7, 9), (8, 6), (7, 3)),
    (7, 9): ((8, 10), (8, 6), (7, 3)),
    (8, 6): ((7, 9), (8, 10), (7, 3)),
    (7, 3): ((7, 9), (8, 10), (8, 6)),
    (5, 5): ((5, 9), (6, 9), (5, 8)),
    (5, 9): ((11, 10), (10, 7)),
    (6, 9): ((5, 9), (5, 5), (5, 8)),
    (5, 8): ((11, 10), (10, 7)),
    (0, 1): ((0, 10), (3, 0)),
    (0, 10): ((0, 1), (3, 0)),
    (3, 0): ((0, 1), (0, 10)),
    (4, 11): ((2, 2),),
    (2, 2): ((4, 11),),
}

# Where a head can be kept: every position, or a named position of IOI prompts (the IOI paper's
# word_idx; END, each prompt's last token, exists for every prompt).
ALL_POSITIONS = "all"
POSITION_NAMES = ("IO", "S1", "S1+1", "S2", "END")
_POSITION_SPELLINGS = {name.lower(): name for name in POSITION_NAMES} | {"s+1": "S1+1", "all": ALL_POSITIONS}

CIRCUIT_FORMAT = """\
A circuit file has one class of heads a line:  CLASS: HEADS [@ POSITIONS]
  name mover: L9H9 L9H6 L10H0 @ END
  induction: 5.5, 6.9 @ S2
Heads are written L9H9 or 9.9 (L9 is every head of layer 9), separated by spaces or commas;
positions are END, IO, S1, S1+1, S2 (named IOI positions) or all (the default). Optional lines:
  circuit: NAME                 the circuit's name
  minimality L10H0: L9H9        the set K for that head's minimality score (none: the empty set;
                                default: the other heads of its class)
Blank lines and text after # are ignored. Inline (--circuit "..."), lines are separated by ';',
and a bare head list ("L9H9,L9H6") is one class kept at every position."""


@dataclass(frozen=True)
class CircuitClass:
    """One class of a circuit: its heads, kept at ``positions`` (``("all",)`` or named positions)."""

    name: str
    heads: tuple[tuple[int, int], ...]
    positions: tuple[str, ...] = (ALL_POSITIONS,)


@dataclass(frozen=True)
class Circuit:
    """A named set of heads in classes (see :data:`CIRCUIT_FORMAT`). ``minimality_k`` holds the
    sets K given for some heads; the others use the rest of their class. Layer wildcards
    (``L9``) are expanded by :meth:`resolve` once the model's size is known."""

    name: str
    classes: tuple[CircuitClass, ...]
    minimality_k: dict[tuple[int, int], tuple[tuple[int, int], ...]] = field(default_factory=dict)
    source: str = "inline"
    wildcards: tuple[tuple[int, int, int], ...] = ()  # (class index, layer, line) of each "L9"
    lines: dict[tuple[int, int], int] = field(default_factory=dict)  # the line each head's class is on
    k_lines: dict[tuple[int, int], int] = field(default_factory=dict)  # the line of each minimality set

    @property
    def heads(self) -> list[tuple[int, int]]:
        return [h for c in self.classes for h in c.heads]

    @property
    def positions_used(self) -> set[str]:
        return {p for c in self.classes for p in c.positions if p != ALL_POSITIONS}

    def class_of(self, head: tuple[int, int]) -> CircuitClass:
        return next(c for c in self.classes if head in c.heads)

    def k_set(self, head: tuple[int, int]) -> tuple[tuple[int, int], ...]:
        """The set K of ``head``'s minimality score: given, or the other heads of its class."""
        if head in self.minimality_k:
            return self.minimality_k[head]
        return tuple(h for h in self.class_of(head).heads if h != head)

    def resolve(self, n_layers: int, n_heads: int) -> "Circuit":
        """This circuit for a model of that size: wildcards expanded, every head checked to exist
        (an error names the line that wrote it)."""
        classes = [list(c.heads) for c in self.classes]
        lines = dict(self.lines)
        for index, layer, line in self.wildcards:
            self._check_layer(layer, n_layers, line)
            classes[index] += [(layer, h) for h in range(n_heads)]
            lines.update({(layer, h): line for h in range(n_heads)})
        seen: dict[tuple[int, int], str] = {}
        for c, heads in zip(self.classes, classes):
            for head in heads:
                line = lines.get(head)
                self._check_layer(head[0], n_layers, line)
                if not 0 <= head[1] < n_heads:
                    raise self._error(line, f"L{head[0]}H{head[1]} does not exist: this model has heads 0-{n_heads - 1} "
                                      "in each layer")
                if head in seen and seen[head] != c.name:
                    raise self._error(line, f"L{head[0]}H{head[1]} is in classes {seen[head]!r} and {c.name!r}: "
                                      "a head belongs to one class")
                seen[head] = c.name
        for head, k in self.minimality_k.items():
            line = self.k_lines.get(head)
            for h in (head, *k):
                if h not in seen:
                    raise self._error(line, f"minimality L{head[0]}H{head[1]}: L{h[0]}H{h[1]} is not in the circuit; "
                                      "the head and its set K must be heads of the circuit")
            if head in k:
                raise self._error(line, f"minimality L{head[0]}H{head[1]}: K must not hold the head itself")
        resolved = tuple(CircuitClass(c.name, tuple(dict.fromkeys(h)), c.positions) for c, h in zip(self.classes, classes))
        return Circuit(self.name, resolved, dict(self.minimality_k), self.source, (), lines, dict(self.k_lines))

    def _check_layer(self, layer: int, n_layers: int, line: int | None) -> None:
        if not 0 <= layer < n_layers:
            raise self._error(line, f"layer {layer} does not exist: this model has layers 0-{n_layers - 1}")

    def _error(self, line: int | None, problem: str) -> InputError:
        where = f"{self.source}, line {line}" if line is not None and self.source != "built-in" else self.source
        return InputError(f"circuit {where}: {problem}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "classes": [{"name": c.name, "heads": [f"L{l}H{h}" for l, h in c.heads], "positions": list(c.positions)}
                        for c in self.classes],
        }


def ioi_circuit() -> Circuit:
    """The IOI paper's circuit of GPT-2 small (26 heads, seven classes, each kept at the position
    it acts at), with the paper's minimality sets."""
    classes = tuple(CircuitClass(name, heads, (IOI_CLASS_POSITIONS[name],)) for name, heads in IOI_HEAD_CLASSES.items())
    return Circuit("ioi", classes, dict(IOI_MINIMALITY_K), "built-in")


_HEAD_WORD = re.compile(r"^L(\d+)H(\d+)$|^(\d+)\.(\d+)$")
_LAYER_WORD = re.compile(r"^L(\d+)$")
_MINIMALITY = re.compile(r"^minimality\s+(\S+)$", re.IGNORECASE)


def parse_circuit(spec: str, *, source: str = "inline") -> Circuit:
    """A circuit from its text (a file's contents, or an inline spec with ``;`` between lines);
    errors name ``source``, the line and what to write instead. ``"ioi"`` is the built-in circuit."""
    if spec.strip().lower() == "ioi" and source == "inline":
        return ioi_circuit()
    inline = source == "inline"
    raw = spec.split(";") if inline else spec.splitlines()
    if inline and len(raw) == 1 and ":" not in raw[0]:
        raw = [f"heads: {raw[0]}"]  # a bare head list: one class at every position

    def error(line: int, problem: str) -> InputError:
        where = (f"inline, part {line}" if len(raw) > 1 else "inline") if inline else f"{source}, line {line}"
        return InputError(f"circuit {where}: {problem}")

    name = None if inline else _stem(source)
    classes: list[CircuitClass] = []
    k_sets: dict[tuple[int, int], tuple[tuple[int, int], ...]] = {}
    wildcards: list[tuple[int, int, int]] = []
    lines: dict[tuple[int, int], int] = {}
    k_lines: dict[tuple[int, int], int] = {}
    for number, text in enumerate(raw, 1):
        text = text.split("#", 1)[0].strip()
        if not text:
            continue
        key, colon, value = text.partition(":")
        key, value = key.strip(), value.strip()
        if not colon or not key:
            raise error(number, f"{text!r} has no 'CLASS:' before its heads; write e.g. 'name mover: L9H9 L9H6 @ END'")
        if key.lower() == "circuit":
            if not value:
                raise error(number, "'circuit:' needs a name after it")
            name = value
            continue
        if m := _MINIMALITY.match(key):
            head = _head(m.group(1))
            if head is None:
                raise error(number, f"{m.group(1)!r} is not a head: write 'minimality L10H0: L9H9' (heads as L9H9 or 9.9)")
            if head in k_sets:
                raise error(number, f"minimality L{head[0]}H{head[1]} is given twice")
            words = _words(value)
            if [w.lower() for w in words] == ["none"]:
                k_sets[head], k_lines[head] = (), number
                continue
            if not words:
                raise error(number, f"minimality L{head[0]}H{head[1]}: give the heads of K, or none for the empty set")
            k = []
            for w in words:
                h = _head(w)
                if h is None:
                    raise error(number, f"{w!r} is not a head: write L9H9 or 9.9")
                k.append(h)
            k_sets[head] = tuple(dict.fromkeys(k))
            k_lines[head] = number
            continue
        heads_text, at, where = value.partition("@")
        positions: tuple[str, ...] = (ALL_POSITIONS,)
        if at:
            words = _words(where)
            if not words:
                raise error(number, "'@' needs positions after it: END, IO, S1, S1+1, S2 or all")
            named = []
            for w in words:
                p = _POSITION_SPELLINGS.get(w.lower())
                if p is None:
                    raise error(number, f"position {w!r} is not one of END, IO, S1, S1+1, S2, all")
                named.append(p)
            positions = (ALL_POSITIONS,) if ALL_POSITIONS in named else tuple(dict.fromkeys(named))
        if any(c.name == key for c in classes):
            raise error(number, f"class {key!r} is written twice; put all its heads on one line")
        heads: list[tuple[int, int]] = []
        words = _words(heads_text)
        if not words:
            raise error(number, f"class {key!r} has no heads; write them after the colon, e.g. 'L9H9 L9H6'")
        for w in words:
            if m := _LAYER_WORD.match(w):
                wildcards.append((len(classes), int(m.group(1)), number))
                continue
            h = _head(w)
            if h is None:
                raise error(number, f"{w!r} is not a head: write L9H9 or 9.9 (L9 for every head of layer 9)")
            if h in lines:
                raise error(number, f"L{h[0]}H{h[1]} is also on line {lines[h]}: a head belongs to one class")
            heads.append(h)
            lines[h] = number
        classes.append(CircuitClass(key, tuple(dict.fromkeys(heads)), positions))
    if not classes:
        raise InputError(f"circuit {source}: no heads in it\n{CIRCUIT_FORMAT}")
    return Circuit(name or "circuit", tuple(classes), k_sets, source, tuple(wildcards), lines, k_lines)


def load_circuit(spec: "str | Circuit") -> Circuit:
    """``spec`` as a circuit: a :class:`Circuit`, ``"ioi"`` (built in), a file, or inline text."""
    from pathlib import Path

    if isinstance(spec, Circuit):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"circuit={spec!r}: give ioi, a circuit file or heads such as 'L9H9,L9H6'")
    path = Path(spec).expanduser()
    if spec.strip().lower() != "ioi" and path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"circuit file {spec}: cannot read it ({e})") from None
        return parse_circuit(text, source=str(spec))
    if "/" in spec or path.suffix.lower() in (".txt", ".circuit"):
        raise InputError(f"circuit file {spec}: no such file")
    return parse_circuit(spec)


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[\s,]+", text.strip()) if w]


def _head(word: str) -> tuple[int, int] | None:
    m = _HEAD_WORD.match(word)
    if m is None:
        return None
    a, b = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    return int(a), int(b)


def _stem(source: str) -> str:
    from pathlib import Path

    return Path(source).stem or "circuit"
