"""One experiment, many methods: a model and a prompt set, prepared once, for a notebook.

>>> exp = ls.Experiment("gpt2-small", "ioi:200", corrupt="abc")
>>> exp.study()                      # direct logit attribution, the logit lens
>>> exp.patch("heads")               # activation-patching grids
>>> exp.ablate("L9H9,L9H6")          # one ablation
>>> exp.paths(senders="L9H9", receivers="logits")
>>> exp.circuit("ioi")               # faithfulness, completeness, minimality
>>> exp.edges(method="eap-ig-inputs")  # edge attribution, MIB's faithfulness curve
>>> exp.activations(["blocks.9.attn.hook_z"])            # TransformerLens's hook names
>>> exp.intervene({"blocks.9.attn.hook_z": fn})          # any function at any hook point

The model is loaded once, the prompt set is generated (or read and checked) once and its
counterparts are drawn once, so every method sees the same pairs; the causal methods share one
encoding of them and one study of their clean prompts, which ``study()`` at its defaults returns too
(whichever runs first: the numbers are the same, each result carries its own prompts), and
``activations`` / ``intervene`` encode the experiment's prompts once. Each method takes only its own
options; what they share (batch size, BOS, seed, progress) is the experiment's. Each returns the
same result, with the same numbers and files, as :func:`logitscope.run_study` /
:func:`logitscope.run_patching` called with those options (tests/test_experiment.py checks it), the
causal ones as their method's own type (:mod:`logitscope.api.method_results`: a ``PatchingResult``).
"""

from __future__ import annotations

from typing import Any, Sequence

from logitscope.api.patching import Prepared, patch_options, prepare, run_prepared, say_study_ran, study_of
from logitscope.api.prepared import STUDY_OF_FIXED, same_but_counterparts, study_on
from logitscope.api.method_results import AblationResult, CircuitPatchingResult, GridsResult, PathsResult
from logitscope.api.patching_result import PatchingResult
from logitscope.api.results import StudyResult
from logitscope.api.study import run_study
from logitscope.engine import distributed
from logitscope.engine.metrics import check_decomposable
from logitscope.engine.setup import as_loaded
from logitscope.errors import ArgumentError
from logitscope.inputs.counterparts import CORRUPTIONS, with_counterparts
from logitscope.inputs.prompt import Prompt
from logitscope.inputs.prompts import GeneratedSet, parse_prompts
from logitscope.methods import hooks as hook_methods
from logitscope.methods.patching.options import RunSettings

__all__ = ["Experiment"]


class Experiment:
    """A model and a prompt set, prepared once; one method per call.

    ``model``: a hub id or alias, a local folder, a ``.gguf`` file, a :class:`logitscope.LoadedModel`
    or a loaded ``transformers`` causal LM (with its ``tokenizer``). ``prompts``: as
    :func:`logitscope.run_study` takes them. ``corrupt``: the counterpart of IOI prompts for the
    causal methods (``"abc"``, the default there, or ``"flip"``); the ``seed``/``arena`` sets and
    JSONL rows with a ``"corrupted"`` field bring their own. Counterparts are drawn on the first
    causal call, so a prompt set without them still runs :meth:`study`.
    """

    def __init__(self, model: Any, prompts: Any, *, tokenizer: Any = None, corrupt: str | None = None,
                 device: Any = "auto", dtype: Any = "float32", device_map: str | None = None,
                 batch_size: int | None = None, prepend_bos: bool | None = None, seed: int = 0,
                 progress: bool = False) -> None:
        if corrupt is not None and corrupt not in CORRUPTIONS:
            raise ArgumentError("corrupt", corrupt, f"use one of {', '.join(CORRUPTIONS)}")
        parsed = parse_prompts(prompts)  # a typo in a file or a spec costs no model load
        self.lm = as_loaded(model, tokenizer, device=device, dtype=dtype, device_map=device_map,
                            ranks=distributed.current())
        # Generated once; a given list is checked (and linted) by each method, as the wrappers do.
        # Fixed once made (read-only properties below): the pairs, the encodings and the study are made
        # once from them, so changing one afterwards would leave them stale.
        self._prompts: list[Prompt] = (parsed.generate(seed=seed, tokenizer=self.lm.tokenizer)
                                       if isinstance(parsed, GeneratedSet) else list(parsed))
        self._corrupt, self._batch_size, self._prepend_bos, self._seed = corrupt, batch_size, prepend_bos, seed
        self.progress = progress  # progress bars only: may change
        self._prepared: Prepared | None = None
        # The clean prompts' study that every patching result carries, made once. "Made" is kept apart
        # from the value: under torchrun the value is None on every rank but 0, and every rank must
        # take the same branch (a study is a collective).
        self._study: Any = None
        self._study_made = False
        self._studies: dict[tuple, StudyResult | None] = {}  # study()'s results by their options (None: rank > 0)
        self._encoded: Any = None  # the prompts as activations() and intervene() encode them, made once

    # ------------------------------------------------------------------ fixed when made
    @property
    def prompts(self) -> list[Prompt]:
        """The experiment's prompts (generated once for a spec such as ``ioi:N``)."""
        return self._prompts

    @property
    def corrupt(self) -> str | None:
        return self._corrupt

    @property
    def batch_size(self) -> int | None:
        return self._batch_size

    @property
    def prepend_bos(self) -> bool | None:
        return self._prepend_bos

    @property
    def seed(self) -> int:
        return self._seed

    def __repr__(self) -> str:
        return f"<Experiment {self.lm.name}: {len(self.prompts)} prompts>"

    # ------------------------------------------------------------------ what every method shares
    @property
    def pairs(self) -> list[Prompt]:
        """The prompts, each with its ``corrupted`` counterpart (drawn and encoded once, on first use)."""
        return self.prepared.prompts

    @property
    def prepared(self) -> Prepared:
        """The prompts with their counterparts, encoded for the model once (the causal methods' start)."""
        if self._prepared is None:
            pairs = with_counterparts(self.prompts, self.corrupt, seed=self.seed, tokenizer=self.lm.tokenizer)
            self._prepared = prepare(pairs, self.lm, self.prepend_bos)
        return self._prepared

    def _shared(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "prepend_bos": self.prepend_bos, "seed": self.seed,
                "progress": self.progress}

    def _patching(self, **options: Any) -> PatchingResult:
        """One causal method on the prepared prompts, with the study made once (as run_patching would
        make it: the default top_k and attention prompt)."""
        checked = patch_options(**options)  # each method's options checked, every one not given at its default
        prep = self.prepared
        if (not self._study_made and _CAUSAL_STUDY in self._studies
                and same_but_counterparts(self.prompts, prep.prompts)):
            early = self._studies[_CAUSAL_STUDY]  # study() made it: the same numbers, the pairs' prompts
            self._study, self._study_made = (None if early is None else study_on(early, prep.prompts)), True
        computed = not self._study_made
        if computed:
            self._study = study_of(prep, batch_size=self.batch_size, seed=self.seed, **_CAUSAL_OPTIONS)
            self._study_made = True
        result = run_prepared(prep, self._study, checked, RunSettings(self.batch_size, self.seed, self.progress),
                              study_made=True)
        if computed and self.progress and result is not None:
            say_study_ran(len(prep.prompts))  # once: every later method reuses it
        return result

    # ------------------------------------------------------------------ one method each
    def study(self, *, top_k: int = 3, attention_prompt: int = 0, attention_heads: Any = None,
              lens_top_k: int | None = 5, dla_by_source: Any = None, neurons: int | None = None,
              metric: Any = "logit-diff") -> StudyResult:
        """Direct logit attribution: logit difference, logit lens, layers, heads, attention, the
        token lens, DLA by source position and by neuron (:func:`logitscope.run_study`). It
        decomposes the logit difference only: another ``metric`` is a clear error.

        Made once per set of options: a second call returns the first result; with the causal
        methods' options (these defaults) it is the study their results carry, whichever ran first."""
        check_decomposable(metric, "study")
        options = dict(top_k=top_k, attention_prompt=attention_prompt, attention_heads=attention_heads,
                       lens_top_k=lens_top_k, dla_by_source=dla_by_source, neurons=neurons)
        key = _study_key(options)
        if key is not None and key in self._studies:
            return self._studies[key]
        if key == _CAUSAL_STUDY and self._shares_causal_study():
            result = None if self._study is None else study_on(self._study, self.prompts)  # None: rank > 0
        else:
            result = run_study(self.prompts, self.lm, **options, **self._shared())
        if key is not None:  # kept on every rank (None on ranks > 0), so every rank skips the next one alike
            self._studies[key] = result
        return result

    def _shares_causal_study(self) -> bool:
        """Whether :meth:`study` takes the causal methods' study, made already: only where its prompts
        are the experiment's but for their counterparts, and none names a metric of its own
        (:meth:`study` then warns that it decomposes the logit difference, the causal methods do not).
        The same answer on every rank."""
        if not self._study_made or not same_but_counterparts(self.prompts, self.prepared.prompts):
            return False
        return not any(p.meta.get("metric") not in (None, "logit-diff") for p in self.prompts)

    def patch(self, what: str | Sequence[str] = "heads", *, direction: str = "denoise", positions: str = "auto",
              method: str = "exact", ablation: str = "mean", metric: Any = None) -> GridsResult:
        """Activation-patching grids (``heads``, ``heads_by_pos``, ``resid``, ``layers``, ``qkv``,
        ``ablation``, ``all`` or grid names), exact or by attribution patching (``method``); the
        ``ablation`` grid (each head knocked out alone) by ``ablation`` (``zero``, ``mean`` or
        ``resample``, as :meth:`ablate` and the CLI's ``patch --ablation``), measuring
        ``metric`` (``logit-diff``, ``logprob-diff``, ``prob-diff``, ``logprob``, ``loss``, ``kl`` or
        a function ``fn(logits, ctx)``: :mod:`logitscope.engine.metrics`; ``None``: the prompts' own,
        a task's ``meta["metric"]``, else ``logit-diff``)."""
        return GridsResult.of(self._patching(what=what, direction=direction, positions=positions, method=method,
                                             ablation=ablation, metric=metric))

    def ablate(self, components: str | Sequence[str] | dict[str, Any], *, ablation: str = "mean",
               metric: Any = None) -> AblationResult:
        """``metric`` (default: the prompts' own, else the logit difference) with ``components`` ablated (``"L9H9,L9H6"``, a
        list, or ``{name: spec}`` for several sets), by ``zero``, ``mean`` or ``resample`` ablation."""
        return AblationResult.of(self._patching(what="none", ablate=components, ablation=ablation, metric=metric))

    def paths(self, senders: str | Sequence[str], receivers: str | Sequence[str] = "logits", *,
              freeze: str = "heads", direction: str = "denoise", metric: Any = None) -> PathsResult:
        """Path patching from ``senders`` to ``receivers`` (``"logits"``, ``"L9H9:q"``, ...), measuring
        ``metric`` (default: the prompts' own, else the logit difference); the IOI paper's direction is
        ``noise``."""
        return PathsResult.of(self._patching(what="none", senders=senders, receivers=receivers, freeze=freeze,
                                             direction=direction, metric=metric))

    def circuit(self, circuit: Any, *, ablation: str = "mean", random_k: int = 5, greedy: int = 0,
                greedy_steps: int = 10, greedy_candidates: int = 10, metric: Any = None) -> CircuitPatchingResult:
        """A circuit's faithfulness, completeness (K = ∅, each class, ``random_k`` random sets,
        ``greedy`` runs of the paper's greedy search) and minimality, by ``ablation``, with F the
        mean ``metric`` (default: the prompts' own, else the logit difference)."""
        return CircuitPatchingResult.of(self._patching(what="none", circuit=circuit, ablation=ablation,
                                                       circuit_random=random_k, circuit_greedy=greedy,
                                                       circuit_greedy_steps=greedy_steps,
                                                       circuit_greedy_candidates=greedy_candidates, metric=metric))

    def edges(self, *, method: str = "eap-ig-inputs", steps: int = 5, intervention: str = "patching",
              metric: Any = None, top_n: int | None = None, curve: bool = True, greedy: bool = False,
              exact_top: int = 0, circuit: Any = None, by: str = "edge") -> Any:
        """Edge attribution and MIB's faithfulness curves (:func:`logitscope.edges`) on the
        experiment's pairs (its prompts alone for ``intervention="zero"``); ``by="node"``: circuits
        of the top n heads and MLPs."""
        from logitscope.api.edges import edges

        prompts = self.prompts if intervention == "zero" else self.pairs
        return edges(prompts, self.lm, method=method, steps=steps, intervention=intervention, metric=metric,
                     top_n=top_n, curve=curve, greedy=greedy, exact_top=exact_top, circuit=circuit, by=by,
                     **self._shared())

    # ------------------------------------------------------------------ the escape hatch
    def activations(self, names: Sequence[str], *, prompts: Any = None, positions: str = "answer",
                    max_bytes: int = 2**30) -> hook_methods.Activations:
        """Activations under TransformerLens's hook names (``blocks.9.attn.hook_z``,
        ``blocks.3.hook_resid_pre``, ...), batch by batch: by default only each prompt's answer
        position (``positions="all"``: every position, right-padded, refused above ``max_bytes``).
        ``prompts``: another prompt list (default: the experiment's)."""
        given, bos = self._hook_input(prompts)
        return hook_methods.activations(self.lm, given, names, batch_size=self.batch_size, prepend_bos=bos,
                                        positions=positions, max_bytes=max_bytes)

    def intervene(self, hooks: Any, *, metric: Any = None, prompts: Any = None) -> hook_methods.Intervention:
        """Run the prompts with ``hooks`` (``{hook name: fn(activation, hook)}``, as TransformerLens's
        ``run_with_hooks``) and return the metric (default: the clean answers' logit difference; a name
        of :mod:`logitscope.engine.metrics` or a function ``metric(logits, batch)``) per prompt,
        hooked and not, with 95% intervals (:func:`logitscope.methods.hooks.intervene`)."""
        given, bos = self._hook_input(prompts)
        return hook_methods.intervene(self.lm, given, hooks, metric=metric, batch_size=self.batch_size,
                                      prepend_bos=bos, seed=self.seed)

    def _hook_input(self, prompts: Any) -> tuple[Any, bool | None]:
        """``(prompts, prepend_bos)`` for the escape hatch: other prompts as given, the experiment's
        own encoded once (an encoded set takes no ``prepend_bos``: it is in its ids)."""
        if prompts is not None:
            return prompts, self.prepend_bos
        if self._encoded is None:
            self._encoded = hook_methods.encode(self.lm, self.prompts, self.prepend_bos)
        return self._encoded, None


def _study_key(options: dict[str, Any]) -> tuple | None:
    """study()'s options as a key, each value with its type (``1`` is not ``True``, a list not a
    tuple); ``None`` for a value that is not a plain number, text or list of them (then no cache)."""
    def frozen(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return type(v).__name__, tuple(frozen(x) for x in v)
        if v is None or isinstance(v, (bool, int, str)):
            return type(v).__name__, v
        raise TypeError(v)

    try:
        return tuple(sorted((k, frozen(v)) for k, v in options.items()))
    except TypeError:
        return None


# The study every patching result carries (as run_patching's, at its defaults), and its key among
# study()'s: study() at its defaults asks for this very study.
_CAUSAL_OPTIONS: dict[str, Any] = {"top_k": 3, "attention_prompt": 0}
_CAUSAL_STUDY = _study_key({**_CAUSAL_OPTIONS, **STUDY_OF_FIXED})
