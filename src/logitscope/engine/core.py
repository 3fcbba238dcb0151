"""The engine: the one object that runs a model, in four modes.

An :class:`Engine` is a :class:`~logitscope.engine.readout.Readout` (the model's final norm,
unembedding, soft-cap and the run's metric) with forward passes:

- :meth:`Engine.observe`: the study's observed passes (the :class:`~logitscope.engine.capture.Recorder`:
  hooks that keep a few scalars per prompt at its answer position);
- :meth:`Engine.record` and :meth:`Engine.patched`: unpatched runs that keep what patched runs need,
  and exact patched runs from the patched layer on (below);
- :meth:`Engine.gradient`: one forward and one backward pass for the metric's gradient with respect
  to activations (attribution patching);
- :meth:`Engine.session`: the model's lifecycle around any of them (eval mode and the model left as
  it came; GPT-2's and GPT-Neo's ``gelu_new`` as one fused kernel where a run has always used it).

Exact patched runs, many at once, each computed from the patched layer on. A patch at layer L
leaves everything below L as it was in the run being patched (the *base* run), and a patch at
position p leaves every earlier position as it was. So one unpatched forward pass over a batch
(:meth:`Engine.record`) keeps what each block received; a patched run (:meth:`Engine.patched`) then
starts at block L with the base run's residual stream, runs only the positions from ``start`` on
(attending to the base run's keys and values for earlier ones), and carries ``groups`` differently
patched copies of the batch at once (rows ``g * B + b``). Its result is the engine's metric (the
clean answers' logit difference by default) at each prompt's last position, through the readout.

Three savings keep a patched run to what its answer needs; each gives the same values up to float32
rounding. Where one is not known to be exact for a family or a run, the run computes everything,
as before (see ``_answers_from`` and ``_z_only``):

- the last block runs its queries, output projection and MLP only from the first answer position on
  (:meth:`Engine._last_block`): its keys and values are taken at every position run (the block is
  stopped at its attention kernel), then the block is run again on the answer positions, attending
  to them;
- where a run replaces heads' ``z`` at the layer it starts from, that layer's attention is not
  computed (:meth:`Engine._attention_replaced`): its output is the output projection of the base
  run's ``z`` with the replaced heads, the rest of the block runs as it is;
- GPT-2's and GPT-Neo's ``gelu_new`` runs as one fused kernel (``equivalent_kernels``), in the
  unpatched runs as in the patched ones.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Callable, Iterable, Iterator, Mapping

import torch

from logitscope.engine import runs
from logitscope.engine.capture import Recorder
from logitscope.engine.nodes import NodeLayout
from logitscope.engine.parts import PartsRecorder
from logitscope.engine.split_qkv import EdgeRunner
from logitscope.engine.metrics import MetricLike
from logitscope.engine.readout import Readout
from logitscope.engine.runs import Run
from logitscope.models.hooks import Hook, HookPoints, first_output
from logitscope.models.kernels import equivalent_kernels
from logitscope.models.load import LoadedModel
from logitscope.models.state import study_mode


class Engine(Readout):
    """Every forward pass of one model: observed, recorded, patched, with gradients (see the module
    docstring); ``metric``: what recorded, patched and gradient runs measure (the readout's)."""

    def __init__(self, lm: LoadedModel, metric: MetricLike = None):
        super().__init__(lm, metric)
        self.lm = lm
        self.points = HookPoints(lm)
        self.blocks = self.points.blocks
        self.n_layers = len(self.blocks)
        self.arg_names = [runs.positional_names(b) for b in self.blocks]  # each block's arguments after the hidden states
        self.modules = self.points.modules  # the one resolver, as the hook points read it
        self.in_device = self.modules.embed.weight.device

    @contextmanager
    def session(self, *, kernels: bool, eval_mode: bool = True) -> Iterator[None]:
        """The model's lifecycle around a run. ``eval_mode``: in eval mode within, and afterwards
        (return or exception) every module's training flag, the attention implementation and the
        hooks on each module as they were (:func:`~logitscope.models.state.study_mode`).
        ``kernels``: GPT-2's and GPT-Neo's ``gelu_new`` as one fused kernel, each module put back
        afterwards (:func:`~logitscope.models.kernels.equivalent_kernels`). Each run keeps what it
        has always used, so no number moves: the study's batches and :meth:`record` / :meth:`patched`
        take the kernels (record and patched in the caller's mode: ``eval_mode=False``); the study's
        finer parts and attention pass, ``activations`` and ``intervene`` take eval mode only; a
        :meth:`gradient` run takes neither."""
        with ExitStack() as stack:
            if eval_mode:
                stack.enter_context(study_mode(self.lm.model))
            if kernels:
                stack.enter_context(equivalent_kernels(self.lm.model))
            yield

    def forward(self, ids: torch.Tensor, hooks: Mapping[tuple[str, int], Hook]) -> None:
        """One forward pass of ``ids`` ``[B, T]`` through the model's body (no unembedding: each
        mode reads the final residual stream at the answer positions itself), ``hooks`` at their
        points (:class:`~logitscope.models.hooks.HookPoints`) during the pass only."""
        with self.points.attach(hooks):
            self.modules.base(input_ids=ids, use_cache=False)

    def answer_resid(self, ids: torch.Tensor, end: torch.Tensor, hooks: Mapping[tuple[str, int], Hook]) -> torch.Tensor:
        """:meth:`forward`, and the final residual stream (what the final norm reads, after any hook
        there) at each row's ``end`` ``[B, d_model]``."""
        final: dict[str, torch.Tensor] = {}
        key = ("resid_post", self.n_layers - 1)
        self.forward(ids, {**hooks, key: runs.keep_final(hooks.get(key), final)})
        x = final["x"]
        return x[torch.arange(x.shape[0], device=x.device), end.to(x.device)]

    def observe(self, lens_top_k: int | None = None) -> Recorder:
        """The study's observed passes: a :class:`~logitscope.engine.capture.Recorder` (its hooks on
        the model while it is entered; one batch per ``run_batch``), with the token lens's top
        ``lens_top_k`` (``None``: off)."""
        return Recorder(self.lm, lens_top_k)

    def observe_parts(self, heads: list[tuple[int, int]], neuron_layer: int | None, t_max: int) -> PartsRecorder:
        """The study's finer observed pass: a :class:`~logitscope.engine.parts.PartsRecorder` for DLA
        of ``heads`` by source position and of ``neuron_layer``'s neurons (``None``: none), on prompts
        of at most ``t_max`` tokens."""
        return PartsRecorder(self.lm, heads, neuron_layer, t_max)

    def split_qkv(self, layout: NodeLayout | None = None) -> EdgeRunner:
        """The edge methods' runs: an :class:`~logitscope.engine.split_qkv.EdgeRunner` over the edge
        graph's ``layout`` (``None``: the model's whole graph), whose ``attach`` gives every node's
        output, every node's input gradient (each head's q/k/v input its own, as TransformerLens's
        ``use_split_qkv_input``) and runs in which chosen edges carry another value."""
        return EdgeRunner(self.lm, layout)

    def value_bias(self, layer: int) -> torch.Tensor | None:
        """The constant ``[n_heads, d_head]`` each head adds to its ``z`` whatever it attends to (value
        bias plus the first norm's bias through W_V), or ``None``: what a head's DLA leaves out."""
        bias = self.modules.value_bias(layer)
        if bias is None:
            return None
        return bias.detach().to(self.modules.out_proj_weight(layer).dtype).view(self.points.n_heads, self.points.d_head)

    def gradient(self, ids: torch.Tensor, end: torch.Tensor, correct: torch.Tensor, incorrect: torch.Tensor,
                 points: list[tuple[str, int]], reference: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, dict[tuple[str, int], torch.Tensor], dict[tuple[str, int], torch.Tensor]]:
        """One forward pass of ``ids`` ``[B, T]`` (right-padded) with gradients, and one backward pass of
        the sum of the prompts' metric values (the engine's metric, each at its own ``end``; the rows do
        not interact, so each row's gradient is its own prompt's; ``reference``: the clean run's answer
        logits for ``kl``, else these). Returns ``(metric [B], activations, gradients)``,
        the last two by ``(point, layer)`` in TransformerLens's layouts, detached."""
        deltas: dict[tuple[str, int], torch.Tensor] = {}
        acts: dict[tuple[str, int], torch.Tensor] = {}

        def shifted(key: tuple[str, int]):
            def hook(x: torch.Tensor) -> torch.Tensor:
                delta = torch.zeros_like(x, requires_grad=True)
                deltas[key], acts[key] = delta, x.detach()
                return x + delta

            return hook

        hooks = {key: shifted(key) for key in points}
        with torch.inference_mode(False), torch.enable_grad():
            # Tensors made under a caller's inference_mode cannot enter autograd: plain copies of the inputs.
            ids, end, correct, incorrect = (t.clone() for t in (ids, end, correct, incorrect))
            resid = self.answer_resid(ids, end, hooks)
            ref = None if reference is None else reference.clone()
            diff = self.measure(resid, correct.to(resid.device), incorrect.to(resid.device), ref)
            keys = list(deltas)
            grads = torch.autograd.grad(diff.sum(), [deltas[k] for k in keys], allow_unused=True)
        out = {k: (g if g is not None else torch.zeros_like(acts[k])) for k, g in zip(keys, grads)}
        return diff.detach(), acts, out

    @torch.inference_mode()
    def record(self, ids: torch.Tensor, end: torch.Tensor, correct: torch.Tensor, incorrect: torch.Tensor, *,
               acts: Iterable[tuple[str, int]] = (), keep_kv: bool = False, reference: Run | None = None) -> Run:
        """One unpatched forward pass of ``ids`` ``[B, T]`` (right-padded; ``end`` the last real
        position of each row), keeping each block's inputs and residual stream, the activations
        ``acts`` asks for, and (``keep_kv``) every layer's keys and values. ``reference``: the
        batch's clean run, for metrics that compare with it (``kl``); ``None``: this run is the clean
        one (every patched run from it, and from runs recorded with it, compares with its logits)."""
        B, T = ids.shape
        L = self.n_layers
        run = Run(B, T, [None] * L, [None] * L, [None] * L if keep_kv else None)  # type: ignore[list-item]
        hooks: dict[tuple[str, int], Hook] = {}
        for key in acts:
            hooks[key] = runs.store(run.acts, key)
        if keep_kv and self.points.via_interface:
            for layer in range(L):
                hooks[("kernel_k", layer)] = runs.store_kv(run.kv, layer, 0)
                hooks[("kernel_v", layer)] = runs.store_kv(run.kv, layer, 1)
        handles = [b.register_forward_pre_hook(runs.keep_inputs(run, i), with_kwargs=True)
                   for i, b in enumerate(self.blocks)]
        try:
            with self.session(kernels=True, eval_mode=False):
                resid = self.answer_resid(ids, end, hooks)
        finally:
            for h in handles:
                h.remove()
        if self.metric.is_logit_diff:
            run.value = self.logit_diff(resid, correct, incorrect)
        else:
            if reference is None:
                run.reference = self.logits_of_normed(self.final_norm(resid.to(self.W_U.device)).float())
            else:
                run.reference = reference.reference
            run.value = self.measure(resid, correct, incorrect, run.reference)
        run.narrow_ok = self.points.via_interface and all(
            name in runs.SEQUENCE_KWARGS or name in runs.WHOLE_KWARGS or not runs.has_tensor(value)
            for j, (args, kwargs) in enumerate(run.inputs)
            for name, value in [*zip(self.arg_names[j], args), *([(None, a) for a in args[len(self.arg_names[j]):]]),
                                *kwargs.items()]
        )
        run.suffix_ok = keep_kv and run.narrow_ok
        return run

    @torch.inference_mode()
    def patched(self, base: Run, layer: int, *, groups: int, hooks: Mapping[tuple[str, int], Hook],
                end: torch.Tensor, correct: torch.Tensor, incorrect: torch.Tensor, start: int = 0,
                edit_input: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """``groups`` patched copies of ``base``'s batch run from block ``layer`` on, positions
        ``start:`` only; ``hooks`` replace activations (rows ``g * B + b``), ``edit_input`` the
        residual stream entering ``layer``. Returns the engine's metric ``[G * B]`` (the clean answers'
        logit difference by default; ``kl`` against ``base.reference``)."""
        B, G = base.batch, groups
        if start and not base.suffix_ok:
            raise ValueError("this run kept no keys and values: start must be 0")
        hidden = base.resid_pre[layer][:, start:]
        hidden = hidden.repeat(G, *([1] * (hidden.dim() - 1)))
        if edit_input is not None:
            hidden = edit_input(hidden)
        kv_prefix = None
        if start:
            kv_prefix = {j: (runs.expand(base.kv[j][0], G, B), runs.expand(base.kv[j][1], G, B), start)
                         for j in range(layer, self.n_layers)}
        last = self.n_layers - 1
        answers = self._answers_from(base, layer, hooks, end, start)
        z_fn = self._z_only(base, layer, hooks, edit_input)
        if z_fn is not None:
            hooks = {k: v for k, v in hooks.items() if k != ("z", layer)}
        with ExitStack() as stack:
            stack.enter_context(self.session(kernels=True, eval_mode=False))
            stack.enter_context(self.points.attach(hooks, kv_prefix=kv_prefix,
                                                   interface=answers is not None or z_fn is not None))
            if z_fn is not None:
                self._attention_replaced(stack, base, layer, G, start, z_fn)
            for j in range(layer, self.n_layers):
                if j == last and answers is not None:
                    hidden = self._last_block(base, hidden, G, start, answers, kv_prefix)
                    start = answers  # hidden now holds positions answers:
                else:
                    args, kwargs = self._block_inputs(base, j, G, start)
                    hidden = first_output(self.blocks[j](hidden, *args, **kwargs))
        rows = torch.arange(G * B, device=hidden.device)
        at = (end.to(hidden.device) - start).repeat(G)
        ref = None if base.reference is None else runs.groups(base.reference, G)
        return self.measure(hidden[rows, at], runs.groups(correct, G), runs.groups(incorrect, G), ref)

    def _answers_from(self, base: Run, layer: int, hooks: Mapping[tuple[str, int], Hook], end: torch.Tensor,
                      start: int) -> int | None:
        """The first answer position, from which the last block runs its queries, output and MLP, or
        ``None`` for the whole block. The whole block runs where the last block is the patched one or
        carries a hook (a hook sees every position run), where the attention is not reached through
        the AttentionInterface (GPT-Neo: its keys and values cannot be taken), where a block receives
        a tensor argument that cannot be cut to fewer positions, or where no position would be saved.
        Every family's block mixes positions only in its attention (norms, MLPs, Mixtral's per-token
        routing, GPT-J's and NeoX's parallel MLP and Gemma's and OLMo-2's post-norms are per position;
        sliding windows and soft-caps act in the attention, on the positions' own masks), so running
        the rest of it on the answer positions alone gives them the same values."""
        last = self.n_layers - 1
        if layer >= last or not base.narrow_ok or any(l == last for _, l in hooks):
            return None
        first = int(end.min())
        return first if first > start else None

    def _z_only(self, base: Run, layer: int, hooks: Mapping[tuple[str, int], Hook],
                edit_input: Callable | None) -> Hook | None:
        """The hook on ``z`` of the run's first layer where the attention there need not be computed:
        the base run kept its ``z`` (every other head's is the base run's, the layer's input being
        the base run's), nothing else is hooked or edited at that layer, the attention is reached
        through the AttentionInterface and the module is in eval mode (no dropout after the output
        projection). Otherwise ``None``: the layer runs whole."""
        fn = hooks.get(("z", layer))
        attention = self.points.attention_modules[layer]
        if (fn is None or edit_input is not None or ("z", layer) not in base.acts or not base.narrow_ok
                or attention.training or any(l == layer and name != "z" for name, l in hooks)):
            return None
        return fn

    def _attention_replaced(self, stack: ExitStack, base: Run, layer: int, G: int, start: int, z_fn: Hook) -> None:
        """Layer ``layer``'s attention output, within ``stack``: the output projection of the base run's
        ``z`` (positions ``start:``) as ``z_fn`` replaces it. The attention module runs on one position
        with its kernel skipped (its q/k/v projections on that position only), and its output is
        replaced; a post-norm (Gemma 2/3, OLMo-2) and the residual add stay the block's."""
        z = base.acts[("z", layer)][:, start:]
        z = z.repeat(G, *([1] * (z.dim() - 1)))
        new = z_fn(z)
        z = z if new is None else new
        attn_out = self.modules.out_proj(layer)(z.reshape(*z.shape[:2], -1))
        attention = self.points.attention_modules[layer]
        self.points.skip_attention(layer)
        for h in (attention.register_forward_pre_hook(runs.one_position, with_kwargs=True),
                  attention.register_forward_hook(lambda module, args, out: runs.with_first(out, attn_out))):
            stack.callback(h.remove)

    def _last_block(self, base: Run, hidden: torch.Tensor, G: int, start: int, answers: int,
                    kv_prefix: dict | None) -> torch.Tensor:
        """The last block at positions ``answers:`` only, from its input at positions ``start:``: its
        keys and values at every position run (the block stopped at its attention kernel), then the
        block on the answer positions, attending to those keys and values."""
        j = self.n_layers - 1
        args, kwargs = self._block_inputs(base, j, G, start)
        k, v = self.points.keys_values(j, lambda: self.blocks[j](hidden, *args, **kwargs))
        if kv_prefix is not None:  # the base run's keys and values before start
            base_k, base_v, _ = kv_prefix[j]
            k = torch.cat([base_k[:, :, :start].to(k.dtype), k], dim=2)
            v = torch.cat([base_v[:, :, :start].to(v.dtype), v], dim=2)
        self.points.set_prefix(j, (k, v, answers))
        args, kwargs = self._block_inputs(base, j, G, answers)
        return first_output(self.blocks[j](hidden[:, answers - start:], *args, **kwargs))

    def _block_inputs(self, base: Run, layer: int, G: int, start: int) -> tuple[tuple, dict]:
        """Block ``layer``'s arguments after the hidden states, for ``G`` groups, positions ``start:``
        (positional ones by their parameter's name: GPT-2 passes its attention mask positionally)."""
        args, kwargs = base.inputs[layer]
        names = self.arg_names[layer]
        kwargs = {k: runs.prepare(v, G, base.batch, start, k) for k, v in kwargs.items()}
        args = tuple(runs.prepare(a, G, base.batch, start, names[k] if k < len(names) else None) for k, a in enumerate(args))
        return args, kwargs
