"""Data parallelism over prompts on ``torch.distributed``: which rank runs which batches, on which
device, how per-prompt results come back to rank 0, and what every rank does when one fails.

Under ``torchrun --nproc-per-node N -m logitscope ...`` (the CLI initialises the process group), or
in a program that has initialised the default process group itself with more than one rank, the
study and the patching loops keep their global length-sorted batching and deal its batches out in
snake order (ranks 0, 1, ..., N-1, N-1, ..., 1, 0, 0, 1, ...), so that every rank gets short and
long batches alike and each batch is the one a single process would run. Per-prompt results are
host arrays of a few floats per prompt; they travel to rank 0 through torch.distributed's object
collectives over gloo (a CUDA rank's group is ``cpu:gloo,cuda:nccl``), and rank 0 puts them back in
prompt order. Only rank 0 builds the result; the API returns ``None`` on the other ranks.

Every collective is an :meth:`Ranks.exchange`: a gather to rank 0, then rank 0's verdict broadcast
to all. A rank whose work raises sends its error in place of its next exchange, so the others learn
of it at the exchange they are waiting in; then every rank raises the same :class:`RankFailure`,
which names the first rank that failed and why. A rank that dies or hangs is found by the process
group's timeout (the CLI's ``--dist-timeout``) or by the broken connection, and named from the
rendezvous store (how far each rank got; whether its process still runs).
"""

# Longer than ~400 lines on purpose: every collective and every failure path of a process group (shards, gathers, exact sums, timeouts, a rank's fault) is one protocol; split, its invariants would be read in several places.

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import pickle
import signal
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from logitscope.errors import ArgumentError, LogitscopeError

DEFAULT_TIMEOUT_S = 900.0
_KEY = "logitscope"
# When a collective breaks and no rank is yet seen gone, look again this many times, this far apart:
# a SIGKILLed process closes its sockets (gloo reports the broken pipe) before the kernel marks it exited.
_SETTLE_TRIES, _SETTLE_S = 10, 0.2


class RankFailure(LogitscopeError):
    """A distributed run failed on some rank; raised on every rank alike.

    ``rank`` is the first rank that failed (``None`` when no rank could be named), ``cause`` its
    exception (this rank's own, or rebuilt from what that rank sent), ``unanimous`` whether every
    rank failed with the same message (an input error: then the message is that error's alone),
    ``broken`` whether the process group itself broke (a rank died or timed out: no collective can
    follow), ``culprits`` every rank found at fault."""

    def __init__(self, message: str, *, rank: int | None, world_size: int, where: str = "", cause: BaseException | None = None,
                 unanimous: bool = False, broken: bool = False, culprits: tuple[int, ...] = (), others: str = ""):
        self.rank, self.world_size, self.where, self.cause = rank, world_size, where, cause
        self.unanimous, self.broken, self.culprits, self.others = unanimous, broken, culprits, others
        super().__init__(message)

    def describe(self, cause_text: Callable[[BaseException], str] | None = None) -> str:
        """The message, with the cause written by ``cause_text`` (the CLI writes flags for arguments)."""
        if self.cause is None:
            return str(self)
        text = (cause_text or describe_error)(self.cause)
        if self.unanimous:
            return text
        return f"rank {self.rank} of {self.world_size} ({self.where}) failed: {text}{self.others}"

    @property
    def user_error(self) -> bool:
        """Whether the cause was bad input (the CLI's exit status 2) rather than a fault (1)."""
        return isinstance(self.cause, LogitscopeError)


def describe_error(e: BaseException) -> str:
    """An exception in one line: ours as their message, others with their type; out of memory with a hint."""
    if isinstance(e, LogitscopeError):
        return str(e)
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = f"{type(e).__name__}: {first}" if first else type(e).__name__
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        text += " (a smaller batch size, or fewer ranks per device, may fit)"
    return text


@dataclass
class _Message:
    """What one rank sends in an exchange: its payload, or the error it failed with."""

    payload: Any = None
    error: bytes | None = None  # the pickled exception (None: this rank is fine)
    text: str = ""  # describe_error of it, in case it does not unpickle
    where: str = ""
    stopped: bool = False  # this rank stopped because another rank had failed


class _PeerFailed(Exception):
    """Raised by :meth:`Ranks.poll` on a rank that learns another rank has failed."""


@dataclass
class Ranks:
    """This process's place in the default process group, as logitscope uses it."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    group: Any  # the process group the object collectives go over (its CPU backend)
    store: Any = None  # the rendezvous store (progress and identity of each rank, for messages)
    timeout_s: float | None = None
    _where: str = field(default="", repr=False)
    _polled: float = field(default=0.0, repr=False)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def where(self) -> str:
        return self._where or f"local rank {self.local_rank} on {socket.gethostname()}, pid {os.getpid()}"

    # ------------------------------------------------------------------ sharding
    def owner(self, batch: int) -> int:
        """The rank that runs global batch ``batch``: snake order, so ranks share short and long batches."""
        lap, place = divmod(batch, self.world_size)
        return place if lap % 2 == 0 else self.world_size - 1 - place

    def mine(self, batch: int) -> bool:
        return self.owner(batch) == self.rank

    def shard(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        """This rank's prompts, in batch order: its batches of ``order`` cut in ``batch_size`` pieces
        (re-cut in ``batch_size`` pieces they give the same batches)."""
        spans = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        mine = [s for i, s in enumerate(spans) if self.mine(i)]
        return np.concatenate(mine) if mine else order[:0]

    def shares(self, n: int, batch_size: int) -> list[int]:
        """How many of ``n`` prompts each rank runs, in batches of ``batch_size``."""
        counts = [0] * self.world_size
        for i, s in enumerate(range(0, n, batch_size)):
            counts[self.owner(i)] += min(batch_size, n - s)
        return counts

    # ------------------------------------------------------------------ collectives
    def exchange(self, payload: Any, step: str, combine: Callable[[list[Any]], Any] | None = None) -> Any:
        """Every rank sends ``payload``; rank 0 gets the list (by rank), other ranks ``None``; with
        ``combine``, every rank gets ``combine(list)``. Raises :class:`RankFailure` on every rank if
        any rank sent an error instead, or if the exchange itself fails (a rank gone, the timeout)."""
        return self._exchange(_Message(payload=payload, where=self.where), step, combine)

    def agree_min(self, value: int, step: str) -> int:
        """The smallest of every rank's ``value`` (each rank's automatic batch size: every rank must run
        the same batches)."""
        return int(self.exchange(int(value), step, combine=min))

    def gather_columns(self, rows: np.ndarray, columns: dict[str, np.ndarray | None], n: int,
                       step: str) -> dict[str, np.ndarray | None] | None:
        """Per-prompt arrays (prompt axis last) of this rank's ``rows`` -> on rank 0, every rank's put
        together in prompt order, ``[..., n]``; ``None`` on the other ranks."""
        parts = self.exchange((np.asarray(rows), columns), step)
        if parts is None:
            return None
        out: dict[str, np.ndarray | None] = {}
        for name, value in columns.items():  # rank 0 always has rows (it runs the first batch)
            if value is None:
                out[name] = None
                continue
            full = np.empty(value.shape[:-1] + (n,), dtype=value.dtype)
            for r, cols in parts:
                if len(r):
                    full[..., r] = cols[name]
            out[name] = full
        return out

    def gather_into(self, rows: np.ndarray, arrays: list[np.ndarray], step: str) -> bool:
        """Fill rank 0's ``arrays`` (``[..., n]``, this rank's ``rows`` filled) with every rank's rows;
        ``True`` on rank 0, ``False`` elsewhere."""
        parts = self.exchange((np.asarray(rows), [a[..., rows] for a in arrays]), step)
        if parts is None:
            return False
        for r, cols in parts[1:]:
            for a, c in zip(arrays, cols):
                a[..., r] = c
        return True

    def sum_tensors(self, tensors: dict[Any, torch.Tensor], step: str) -> None:
        """Replace each of ``tensors`` by its sum over ranks (in place; a key a rank lacks counts as zero
        there and is added, on the CPU, where it was missing)."""
        local = {k: v.detach().cpu().numpy() for k, v in tensors.items()}

        def total(parts: list[dict[Any, np.ndarray]]) -> dict[Any, np.ndarray]:
            out: dict[Any, np.ndarray] = {}
            for part in parts:
                for k, v in part.items():
                    out[k] = v.copy() if k not in out else out[k] + v
            return out

        for k, v in self.exchange(local, step, combine=total).items():
            if k in tensors:
                tensors[k].copy_(torch.from_numpy(v))
            else:
                tensors[k] = torch.from_numpy(v)

    def poll(self, every_s: float = 0.5) -> None:
        """Between batches: stop at once (to the next exchange) if another rank has failed, rather than
        finish this rank's share first. Asks the store at most every ``every_s`` seconds."""
        now = time.monotonic()
        if self.store is None or now - self._polled < every_s:
            return
        self._polled = now
        try:
            if not self.store.check([f"{_KEY}/failed"]):
                return
            failed_at = int(self.store.get(f"{_KEY}/failed"))
            done = int(self.store.add(f"{_KEY}/steps/{self.rank}", 0))
        except Exception:
            return
        if failed_at > done:  # a failure at the exchange this rank is heading for (not an earlier call's)
            raise _PeerFailed()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """A stretch of work that every rank runs, ending in an exchange: an error raised inside is
        sent to the other ranks (at whatever exchange they are in), and every rank raises
        :class:`RankFailure`."""
        try:
            yield
        except RankFailure:
            raise
        except (Exception, KeyboardInterrupt) as e:
            self._exchange(_failed(e, self.where), name, None, own=e)
            raise  # pragma: no cover - _exchange raised
        self._exchange(_Message(where=self.where), name, None)

    def reported(self, mark: bool = False) -> bool:
        """Whether rank 0 has said what failed (``mark``: rank 0 says it has), so that a rank that
        then finds rank 0 gone keeps quiet."""
        if self.store is None:
            return False
        try:
            if mark:
                self.store.set(f"{_KEY}/reported", "1")
            return bool(self.store.check([f"{_KEY}/reported"]))
        except Exception:
            return False

    def farewell(self) -> None:
        """After a :class:`RankFailure`: every rank waits here until rank 0 has said what failed (so that
        no rank exits first and torchrun stops rank 0 while it speaks)."""
        try:
            self.exchange(None, "farewell")
        except RankFailure:
            pass

    # ------------------------------------------------------------------ internals
    def _exchange(self, message: _Message, step: str, combine: Callable[[list[Any]], Any] | None,
                  own: BaseException | None = None) -> Any:
        reached = self._arrive()
        if message.error is not None and not message.stopped and self.store is not None:
            try:  # the others stop at their next poll instead of finishing their share
                self.store.set(f"{_KEY}/failed", str(reached))
            except Exception:
                pass
        try:
            gathered: list[_Message] | None = [None] * self.world_size if self.is_root else None  # type: ignore[list-item]
            dist.gather_object(message, gathered, dst=0, group=self.group)
            verdict: Any = None
            if gathered is not None:
                failed = [(r, m) for r, m in enumerate(gathered) if m.error is not None and not m.stopped]
                failed = failed or [(r, m) for r, m in enumerate(gathered) if m.error is not None]
                if failed:
                    verdict = ("failed", [(r, m.error, m.text, m.where) for r, m in failed])
                else:
                    verdict = ("ok", combine([m.payload for m in gathered]) if combine is not None else None)
            box = [verdict]
            dist.broadcast_object_list(box, src=0, group=self.group)
            verdict = box[0]
        except Exception as e:  # the collective itself: a rank died, hung past the timeout, or the network
            raise self._lost(e, step, reached) from e
        if verdict[0] == "failed":
            raise self._failure(verdict[1], own) from own
        if combine is not None:
            return verdict[1]
        return [m.payload for m in gathered] if gathered is not None else None

    def _failure(self, failed: list[tuple[int, bytes, str, str]], own: BaseException | None) -> RankFailure:
        first, blob, text, where = failed[0]
        cause = own if first == self.rank and own is not None else _unpickle(blob, text)
        texts = {t for _, _, t, _ in failed}
        unanimous = len(failed) == self.world_size and len(texts) == 1
        if unanimous and own is not None:
            cause = own
        others = ""
        if len(failed) > 1 and not unanimous:
            rest = ", ".join(str(r) for r, *_ in failed[1:])
            others = f" (rank{'s' if len(failed) > 2 else ''} {rest} failed too)"
        f = RankFailure("", rank=first, world_size=self.world_size, where=where, cause=cause, unanimous=unanimous,
                        culprits=tuple(r for r, *_ in failed), others=others)
        f.args = (f.describe(),)
        return f

    def _arrive(self) -> int:
        """Count this rank's arrival at one more exchange in the store (how far each rank got)."""
        if self.store is None:
            return 0
        try:
            return int(self.store.add(f"{_KEY}/steps/{self.rank}", 1))
        except Exception:
            return 0

    def _lost(self, error: Exception, step: str, reached: int) -> RankFailure:
        """What to say when a collective fails: which ranks did not reach it, or are gone."""
        gone, late = self._missing(reached)
        for _ in range(_SETTLE_TRIES):  # a killed rank's sockets close while it is still exiting: let it go
            if gone:
                break
            time.sleep(_SETTLE_S)
            gone, late = self._missing(reached)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        timeout = f"{self.timeout_s:g} s" if self.timeout_s else "the process group's timeout"
        if gone:
            r, who = gone[0]
            message = (f"rank {r} of {self.world_size} ({who}) is no longer running: it was killed or crashed "
                       f"(torchrun's summary gives its exit code)")
        elif late:
            r, who = late[0]
            message = (f"rank {r} of {self.world_size} ({who}) did not reach {step} within {timeout}: it hung, "
                       "or is far slower than the others (the timeout is --dist-timeout, or init_process_group's)")
        else:
            message = f"lost contact with the other ranks during {step}: {first}"
        culprits = tuple(r for r, _ in gone + late)
        return RankFailure(message, rank=culprits[0] if culprits else None, world_size=self.world_size,
                           broken=True, culprits=culprits)

    def _missing(self, reached: int) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
        """Ranks whose process on this host is gone, and ranks that never reached this exchange."""
        gone, late = [], []
        if self.store is None:
            return gone, late
        host = socket.gethostname()
        for r in range(self.world_size):
            if r == self.rank:
                continue
            try:
                who = json.loads(self.store.get(f"{_KEY}/who/{r}")) if self.store.check([f"{_KEY}/who/{r}"]) else {}
                steps = int(self.store.add(f"{_KEY}/steps/{r}", 0))
            except Exception:
                continue
            text = f"local rank {who.get('local_rank', '?')} on {who.get('host', '?')}, pid {who.get('pid', '?')}"
            if who.get("host") == host and not _running(int(who["pid"])):
                gone.append((r, text))
            elif reached and steps < reached:
                late.append((r, text))
        return gone, late

    def register(self) -> None:
        if self.store is None:
            return
        try:
            who = {"host": socket.gethostname(), "pid": os.getpid(), "local_rank": self.local_rank}
            self.store.set(f"{_KEY}/who/{self.rank}", json.dumps(who))
        except Exception:
            self.store = None


def _failed(e: BaseException, where: str) -> _Message:
    if isinstance(e, _PeerFailed):
        return _Message(error=pickle.dumps(None), text="stopped: another rank failed", where=where, stopped=True)
    try:
        blob = pickle.dumps(e)
        pickle.loads(blob)
    except Exception:
        blob = pickle.dumps(None)
    return _Message(error=blob, text=describe_error(e), where=where)


def _unpickle(blob: bytes, text: str) -> BaseException:
    try:
        e = pickle.loads(blob)
    except Exception:
        e = None
    return e if isinstance(e, BaseException) else RuntimeError(text)


def _running(pid: int) -> bool:
    """Whether process ``pid`` (on this host) still runs: not gone, not a zombie waiting for torchrun."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


# ---------------------------------------------------------------------------------------- the group
def current() -> Ranks | None:
    """This process's ranks, or ``None`` outside a process group (or in one of a single rank): then
    everything runs as in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    backend = str(dist.get_backend())
    if not ("gloo" in backend or backend == "mpi"):
        raise ArgumentError(
            "backend", backend, "logitscope gathers per-prompt results as host arrays, which this process group "
            "cannot carry; initialise it with backend='cpu:gloo,cuda:nccl' (or 'gloo')")
    store = _default_store()
    timeout = None
    if store is not None:
        try:
            if store.check([f"{_KEY}/timeout_s"]):
                timeout = float(store.get(f"{_KEY}/timeout_s"))
        except Exception:
            store = None
    world = dist.get_world_size()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    rank = dist.get_rank()
    ranks = Ranks(rank, world, int(os.environ.get("LOCAL_RANK", rank % local_world)), local_world,
                  dist.group.WORLD, store, timeout)
    ranks.register()
    return ranks


def _default_store() -> Any:
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:
        return None


def collective(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run by every rank of a process group as one step (see :meth:`Ranks.step`); its result
    comes back on rank 0 and ``None`` on the other ranks. Outside a process group, ``fn`` as is."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        ranks = current()
        if ranks is None:
            return fn(*args, **kwargs)
        with ranks.step(f"the end of {fn.__name__}"):
            result = fn(*args, **kwargs)
        return result if ranks.is_root else None

    return run


def launched_by_torchrun() -> bool:
    """Whether this process is one of several that torchrun (or another launcher with its
    environment variables) started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


@contextmanager
def launch(timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Ranks]:
    """For the CLI under torchrun: initialise the default process group from torchrun's environment
    (gloo; ``cpu:gloo,cuda:nccl`` where CUDA is present), with ``timeout_s`` on every collective, and
    run the command as one step of every rank. A SIGTERM (torchrun stops every rank when one fails)
    becomes a :class:`RankFailure` saying which rank is gone, so that files are cleaned up."""
    if timeout_s <= 0:
        raise ArgumentError("dist_timeout", timeout_s, "must be more than 0 seconds")
    timeout = _dt.timedelta(seconds=timeout_s)
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=timeout)
    store = _default_store()
    if store is not None:  # for the messages of later calls of current() (every rank sets the same)
        store.set(f"{_KEY}/timeout_s", str(timeout_s))
    ranks = current()
    assert ranks is not None
    ranks.timeout_s = timeout_s

    def stopped(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the rank is on its way out
        gone, _ = ranks._missing(0)
        if gone:
            r, who = gone[0]
            message = (f"rank {r} of {ranks.world_size} ({who}) is no longer running: it was killed or crashed "
                       "(torchrun's summary gives its exit code); torchrun stopped the other ranks")
        else:
            message = "stopped by SIGTERM (torchrun stops every rank when one fails; its summary names that rank)"
        raise RankFailure(message, rank=gone[0][0] if gone else None, world_size=ranks.world_size, broken=True,
                          culprits=tuple(r for r, _ in gone))

    try:
        previous = signal.signal(signal.SIGTERM, stopped)
    except ValueError:  # not the main thread: no handler
        previous = None
    try:
        with ranks.step("the end of the command"):
            yield ranks
    finally:
        if previous is not None and signal.getsignal(signal.SIGTERM) is stopped:
            signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------------------- devices
def placement(device: Any, device_map: Any, ranks: Ranks | None) -> dict[str, Any]:
    """``load_model``'s placement arguments for this rank: outside a process group, as given; in one,
    ``device`` becomes this rank's own (``cuda:LOCAL_RANK``) and ``device_map`` spreads the replica
    over this rank's share of the node's GPUs (:func:`replica_gpus`)."""
    if ranks is None:
        return {"device": device, "device_map": device_map}
    if device_map is None:
        dev = rank_device(device, ranks.local_rank, ranks.local_world_size)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)  # so that pinned memory and CUDA's context land on this rank's GPU
        return {"device": dev, "device_map": None}
    if not isinstance(device_map, str):
        return {"device": device, "device_map": device_map}  # the user's own map: as given
    gpus = replica_gpus(ranks.local_rank, ranks.local_world_size, torch.cuda.device_count() if torch.cuda.is_available() else 0,
                        device_map)
    torch.cuda.set_device(gpus[0])
    return {"device": device, "device_map": device_map,
            "max_memory": {i: torch.cuda.mem_get_info(i)[0] for i in gpus}}


def rank_device(device: Any, local_rank: int, local_world_size: int) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` for ``auto`` (where CUDA is) and ``cuda``; ``cpu`` and
    ``mps`` are shared by the node's ranks; ``cuda:N`` only with one rank per node."""
    name = "auto" if device is None else str(device)
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available():
            return torch.device("mps")
        else:
            return torch.device("cpu")
    dev = torch.device(name) if name != "cuda" else None
    if dev is not None and dev.type != "cuda":
        return dev
    if dev is not None and dev.index is not None:
        if local_world_size > 1:
            raise ArgumentError("device", device, f"with {local_world_size} ranks on this node each rank takes its own GPU "
                                f"(cuda:LOCAL_RANK); pass device='cuda' or 'auto'")
        return dev
    if not torch.cuda.is_available():
        raise ArgumentError("device", device, "CUDA is not available on this machine; use auto or cpu")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ArgumentError("device", device, f"local rank {local_rank} has no GPU of its own: this node has {count}; "
                            f"start at most {count} processes per node (torchrun --nproc-per-node {count})")
    return torch.device("cuda", local_rank)


def replica_gpus(local_rank: int, local_world_size: int, n_gpus: int, device_map: str = "auto") -> list[int]:
    """The GPUs of this rank's model replica with a device map: the node's ``n_gpus`` cut into
    ``local_world_size`` equal groups of consecutive GPUs, one per rank."""
    if n_gpus == 0:
        raise ArgumentError("device_map", device_map, "a device map needs GPUs, and this node has none")
    if n_gpus % local_world_size:
        fits = [k for k in range(1, n_gpus + 1) if n_gpus % k == 0]
        raise ArgumentError(
            "device_map", device_map, f"this node's {n_gpus} GPUs do not divide among {local_world_size} ranks; start "
            f"{', '.join(map(str, fits))} processes per node (each model replica then gets {n_gpus} / that many GPUs)")
    per = n_gpus // local_world_size
    return list(range(local_rank * per, (local_rank + 1) * per))
