"""The pool core's invariants, under every sequence of events Hypothesis can find.

A model drives :class:`tether._pool_core.PoolCore` directly, with a fake clock and no event
loop, through random acquires, returns (healthy, broken, repeated), cancellations,
timeouts, checks that pass or fail, creations that succeed or fail, destructions, time
passing, maintenance, refills, resizes and closes. After every step it checks:

* resources in existence never exceed ``max_size`` (after a shrink, they only go down
  until they fit);
* no resource is held by two callers, and every held resource's lease is odd;
* nothing is lost: every resource ever created is idle, held, waiting to be destroyed, or
  destroyed exactly once;
* waiters are served in arrival order;
* the statistics agree with the model.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from tether import PoolClosed, PoolTimeout, PoolUnavailable, _pool_core
from tether._pool_core import CREATE, TIMED_OUT, PoolConfig, PoolCore, PoolState, Slot, Waiter


@dataclass(eq=False)
class Caller:
    """A caller in the model: queued, checking, creating, holding, or done."""

    seq: int
    waiter: Waiter[int]
    state: str = "new"
    """queued | granted | permitted | checking | creating | holding | returned | done"""
    slot: Slot[int] | None = None
    lease: int = 0
    history: list[str] = field(default_factory=list)


class PoolCoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.next_resource = itertools.count()
        self.seq = itertools.count()
        self.callers: list[Caller] = []
        self.to_destroy: list[Slot[int]] = []
        self.destroyed: set[int] = set()
        self.background_creations = 0
        self.core: PoolCore[int] | None = None
        self.ceiling = 0
        self.used_handouts = 0

    # ------------------------------------------------------------------ setup

    @rule(
        min_size=st.integers(0, 3),
        extra=st.integers(0, 3),
        has_check=st.booleans(),
        max_lifetime=st.sampled_from([None, 5.0, 30.0]),
        max_idle=st.sampled_from([None, 2.0]),
        max_uses=st.sampled_from([None, 1, 3]),
        leak_timeout=st.sampled_from([None, 4.0]),
    )
    @precondition(lambda self: self.core is None)
    def make_pool(  # noqa: PLR0917 - Hypothesis passes rule arguments by keyword
        self,
        min_size: int,
        extra: int,
        has_check: bool,
        max_lifetime: float | None,
        max_idle: float | None,
        max_uses: int | None,
        leak_timeout: float | None,
    ) -> None:
        config = PoolConfig(
            name="model",
            min_size=min_size,
            max_size=max(1, min_size + extra),
            max_lifetime=max_lifetime,
            max_idle=max_idle,
            max_uses=max_uses,
            check_after=1.0,
            leak_timeout=leak_timeout,
            has_check=has_check,
            retry_delay=(0.5, 4.0),
        )
        self.core = PoolCore(config, jitter=lambda: 0.5)
        self.core.open()
        self.ceiling = config.max_size

    def pool(self) -> PoolCore[int]:
        assert self.core is not None
        return self.core

    def live(self, state: str) -> list[Caller]:
        return [c for c in self.callers if c.state == state]

    # ------------------------------------------------------------------ outcomes

    def _settle(self, caller: Caller, grant: object) -> None:
        """Record what a caller got, directly or by being woken."""
        core = self.pool()
        if grant is None:
            caller.state = "queued"
        elif isinstance(grant, Slot):
            assert grant.held, "a granted slot must be held"
            caller.slot = grant
            caller.lease = grant.lease
            caller.state = "checking" if core.needs_check(grant, self.now) else "holding"
            if caller.state == "holding":
                self.used_handouts += 1
        elif grant is CREATE:
            caller.state = "creating"
        else:
            assert isinstance(grant, PoolClosed | PoolUnavailable | PoolTimeout | KeyError)
            caller.state = "done"
        caller.history.append(caller.state)

    def _drain(self) -> None:
        core = self.pool()
        woken, core.woken = core.woken, []
        for waiter in woken:
            caller = next(c for c in self.callers if c.waiter is waiter)
            if isinstance(waiter.grant, Slot | type(CREATE)):
                # FIFO: nobody who arrived earlier may still be waiting in line.
                earlier = [c for c in self.live("queued") if c.seq < caller.seq]
                assert earlier == [], f"{caller.seq} served before {[c.seq for c in earlier]}"
            if isinstance(waiter.grant, Slot) and caller.state != "creating":
                caller.state = "granted"  # woken; it has yet to resume and see its slot
            elif waiter.grant is CREATE:
                caller.state = "permitted"
            else:
                self._settle(caller, waiter.grant)
        doomed, core.doomed = core.doomed, []
        for slot in doomed:
            assert slot.resource not in self.destroyed, "doomed twice"
            assert slot not in self.to_destroy, "doomed twice"
            self.to_destroy.append(slot)

    # ------------------------------------------------------------------ rules

    @rule()
    @precondition(lambda self: self.core is not None)
    def take_fast(self) -> None:
        core = self.pool()
        slot = core.take(self.now)
        if slot is not None:
            assert not self.live("queued"), "the fast path barged ahead of a waiter"
            caller = Caller(next(self.seq), Waiter(None, None, None, 0, self.now))
            self.callers.append(caller)
            caller.waiter.grant = slot
            self._settle(caller, slot)
            assert caller.state == "holding"
        self._drain()

    @rule(timeout=st.sampled_from([math.inf, math.inf, 1.0, 4.0, 12.0]))
    @precondition(lambda self: self.core is not None)
    def request(self, timeout: float) -> None:
        core = self.pool()
        waiter: Waiter[int] = Waiter(None, None, None, 0, self.now, deadline=self.now + timeout)
        caller = Caller(next(self.seq), waiter)
        self.callers.append(caller)
        queued_before = bool(self.live("queued"))
        grant = core.acquire(self.now, caller.waiter)
        if isinstance(grant, Slot) or grant is CREATE:
            assert not queued_before, "served ahead of the queue"
        self._settle(caller, grant)
        self._drain()

    @rule(data=st.data())
    @precondition(
        lambda self: self.core is not None and (self.live("granted") or self.live("permitted"))
    )
    def resume(self, data: st.DataObject) -> None:
        """A woken caller runs again and takes what it was granted."""
        caller = data.draw(st.sampled_from(self.live("granted") + self.live("permitted")))
        self._settle(caller, caller.waiter.grant)

    @rule(ok=st.booleans(), data=st.data())
    @precondition(lambda self: self.core is not None and self.live("checking"))
    def finish_check(self, ok: bool, data: st.DataObject) -> None:
        core = self.pool()
        caller = data.draw(st.sampled_from(self.live("checking")))
        assert caller.slot is not None
        if ok:
            core.check_passed(caller.slot, self.now)
            caller.state = "holding"
            self.used_handouts += 1
        else:
            grant = core.check_failed(caller.slot, caller.waiter, self.now)
            caller.slot = None
            self._settle(caller, grant)
        self._drain()

    @rule(ok=st.booleans(), data=st.data())
    @precondition(
        lambda self: self.core is not None and (self.live("creating") or self.background_creations)
    )
    def finish_creation(self, ok: bool, data: st.DataObject) -> None:
        core = self.pool()
        creators: list[Caller | None] = [*self.live("creating")]
        if self.background_creations:
            creators.append(None)
        creator = data.draw(st.sampled_from(creators))
        waiter = None
        if creator is None:
            self.background_creations -= 1
        else:
            waiter = creator.waiter
            creator.state = "done"  # until the outcome below says otherwise
        if ok:
            core.created(next(self.next_resource), self.now, waiter)
        else:
            core.create_failed(KeyError("refused"), self.now, waiter)
        self._drain()

    @rule(kind=st.sampled_from(["healthy", "broken", "give_back"]), data=st.data())
    @precondition(lambda self: self.core is not None and self.live("holding"))
    def give_back(self, kind: str, data: st.DataObject) -> None:
        core = self.pool()
        caller = data.draw(st.sampled_from(self.live("holding")))
        assert caller.slot is not None
        if kind == "give_back":
            handed_to = core.give_back(caller.slot, caller.lease, self.now)
            if isinstance(handed_to, Waiter):
                core.woken.append(handed_to)  # the shell wakes it, as for any other
        else:
            core.release(caller.slot, caller.lease, self.now, broken=kind == "broken")
        caller.state = "returned"
        self._drain()

    @rule(data=st.data())
    @precondition(lambda self: self.core is not None and self.live("returned"))
    def return_twice(self, data: st.DataObject) -> None:
        """A second return of the same lease is refused and changes nothing."""
        core = self.pool()
        caller = data.draw(st.sampled_from(self.live("returned")))
        assert caller.slot is not None
        before = core.stats()
        if caller.slot.reclaimed:
            return
        with pytest.raises(ValueError, match="not held from pool"):
            core.release(caller.slot, caller.lease, self.now)
        assert core.stats() == before
        assert not core.woken
        assert not core.doomed

    def _giving_up(self) -> list[Caller]:
        states = ("queued", "granted", "permitted", "creating", "checking")
        return [c for c in self.callers if c.state in states]

    @rule(timed_out=st.booleans(), data=st.data())
    @precondition(lambda self: self.core is not None and self._giving_up())
    def give_up(self, timed_out: bool, data: st.DataObject) -> None:
        """A caller is cancelled (or times out) wherever it is in its acquire."""
        core = self.pool()
        caller = data.draw(st.sampled_from(self._giving_up()))
        if caller.state == "creating":
            core.abandon_creation(caller.waiter, self.now, timed_out=timed_out)
            # The permit is in use; the creation itself is still to finish.
            self.background_creations += 1
        elif caller.state == "checking":
            assert caller.slot is not None
            core.drop(caller.slot)
        else:
            core.cancel_wait(caller.waiter, self.now, timed_out=timed_out)
        caller.state = "done"
        self._drain()

    @rule()
    @precondition(lambda self: self.core is not None and self.to_destroy)
    def destroy_one(self) -> None:
        core = self.pool()
        slot = self.to_destroy.pop(0)
        self.destroyed.add(slot.resource)
        core.destroyed(slot, self.now)
        self._drain()

    @rule(seconds=st.sampled_from([0.1, 0.6, 1.5, 3.0, 10.0]))
    @precondition(lambda self: self.core is not None)
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    @precondition(lambda self: self.core is not None)
    def maintain(self) -> None:
        core = self.pool()
        leaked, next_due = core.maintain(self.now)
        assert next_due > self.now or math.isinf(next_due) or core._failing
        for slot in leaked:
            assert slot.held
            # A slot is held from its hand-out: also while its caller checks it, or has
            # been woken with it but not yet resumed.
            holder = [
                c
                for c in self.live("holding") + self.live("checking") + self.live("granted")
                if (c.waiter.grant if c.state == "granted" else c.slot) is slot
            ]
            assert len(holder) == 1
        self._drain()

    @rule()
    @precondition(lambda self: self.core is not None)
    def expire(self) -> None:
        """Waiters past their deadline time out; the next deadline is the earliest left."""
        upcoming = self.pool().expire(self.now)
        self._drain()
        queued = self.live("queued")
        assert all(c.waiter.deadline > self.now for c in queued)
        assert upcoming == min((c.waiter.deadline for c in queued), default=math.inf)

    @rule()
    @precondition(lambda self: self.core is not None)
    def refill(self) -> None:
        self.background_creations += self.pool().refill(self.now)
        self._drain()

    @rule(min_size=st.integers(0, 3), max_size=st.integers(1, 5))
    @precondition(lambda self: self.core is not None)
    def resize(self, min_size: int, max_size: int) -> None:
        core = self.pool()
        if min_size > max_size:
            with pytest.raises(ValueError, match="must not exceed"):
                core.resize(min_size, max_size, self.now)
            return
        core.resize(min_size, max_size, self.now)
        self.ceiling = max(max_size, min(self.ceiling, core.size))
        self._drain()

    @rule()
    @precondition(lambda self: self.core is not None and self.core.state is PoolState.OPEN)
    def close(self) -> None:
        self.pool().close()
        self._drain()
        assert not self.live("queued")

    @rule()
    @precondition(lambda self: self.core is not None and self.core.state is PoolState.CLOSING)
    def reclaim(self) -> None:
        core = self.pool()
        reclaimed = core.reclaim_held()
        for caller in self.live("holding") + self.live("checking") + self.live("granted"):
            slot = caller.waiter.grant if caller.state == "granted" else caller.slot
            if slot in reclaimed:
                if caller.state != "holding":
                    self.used_handouts += 1  # handed out, then reclaimed before use
                caller.slot = slot  # type: ignore[assignment]
                caller.lease = slot.lease - 1  # type: ignore[union-attr]
                caller.state = "returned"
        self._drain()

    # ------------------------------------------------------------------ invariants

    @invariant()
    def never_above_max_size(self) -> None:
        if self.core is None:
            return
        core = self.core
        assert core.size <= self.ceiling
        self.ceiling = max(core.config.max_size, min(self.ceiling, core.size))

    @invariant()
    def held_by_one_caller_each(self) -> None:
        if self.core is None:
            return
        held = [
            c.waiter.grant if c.state == "granted" else c.slot
            for c in self.callers
            if c.state in ("holding", "checking", "granted")
        ]
        assert len({id(s) for s in held}) == len(held)
        for slot in held:
            assert isinstance(slot, Slot)
            assert slot.held
            assert slot.lease % 2 == 1

    @invariant()
    def nothing_lost(self) -> None:
        if self.core is None:
            return
        core = self.core
        idle = list(core.idle)
        held = [
            c.waiter.grant if c.state == "granted" else c.slot
            for c in self.callers
            if c.state in ("holding", "checking", "granted")
        ]
        assert core.created_count == len(idle) + len(held) + len(self.to_destroy) + len(
            self.destroyed
        )
        assert core.destroyed_count == len(self.destroyed)
        assert {id(s) for s in idle}.isdisjoint({id(s) for s in held})

    @invariant()
    def waiting_count_matches_the_queue(self) -> None:
        if self.core is not None:
            live = [w for w in self.core._waiters if not w.cancelled and w.grant is None]
            assert self.core.waiting_count == len(live) == len(self.live("queued"))

    @invariant()
    def nothing_idle_while_anyone_waits(self) -> None:
        if self.core is not None and self.live("queued"):
            assert self.core.idle_count == 0

    @invariant()
    def stats_agree_with_the_model(self) -> None:
        if self.core is None:
            return
        core = self.core
        stats = core.stats()
        held = len(self.live("holding")) + len(self.live("checking")) + len(self.live("granted"))
        assert stats.in_use == held
        assert stats.waiting == len(self.live("queued"))
        assert stats.idle == core.idle_count
        creating = (
            len(self.live("creating")) + len(self.live("permitted")) + self.background_creations
        )
        assert stats.size == stats.idle + held + creating + len(self.to_destroy)
        pending = len(self.live("checking")) + len(self.live("granted"))
        assert stats.acquired == self.used_handouts + pending
        assert stats.wait.count == stats.acquired
        assert stats.hold.count == stats.acquired - held


PoolCoreMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestPoolCore = PoolCoreMachine.TestCase


def bare_core(
    name: str,
    *,
    min_size: int,
    max_size: int,
    max_idle: float | None = None,
    max_uses: int | None = None,
    has_check: bool = False,
) -> PoolCore[object]:
    """An open core with no lifetimes, and no checks or use limits unless asked for (a
    check is due after a second idle), on a clock the test gives."""
    core: PoolCore[object] = PoolCore(
        PoolConfig(
            name=name,
            min_size=min_size,
            max_size=max_size,
            max_lifetime=None,
            max_idle=max_idle,
            max_uses=max_uses,
            check_after=1.0,
            leak_timeout=None,
            has_check=has_check,
            retry_delay=(0.1, 1.0),
        ),
        jitter=lambda: 0.0,
    )
    core.open()
    return core


def test_idle_resources_kept_for_min_size_are_not_due_for_maintenance() -> None:
    """A resource idle past max_idle but kept because of min_size does not make the next
    maintenance due at once (the housekeepers would wake every millisecond)."""
    core = bare_core("kept", min_size=1, max_size=2, max_idle=2.0)
    assert core.refill(0.0) == 1
    core.created(object(), 0.0, None)
    leaked, next_due = core.maintain(3.0)
    assert (leaked, core.idle_count) == ([], 1)
    assert next_due > 3.0


def test_waiters_timed_out_together_share_one_description_of_the_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When many waiters' deadlines pass at once (an overloaded pool), expire() reads who
    holds what and the statistics once for all of them, not once per waiter, and the
    statistics are summarised (sorting up to 2,048 durations of each kind) only when an
    error's ``stats`` is first read: the shell waits for expire() to finish."""
    core = bare_core("crowded", min_size=0, max_size=1)
    first = Waiter[object](None, "holder", None, 0, 0.0)
    assert core.acquire(0.0, first) is CREATE
    held = core.created(object(), 0.0, first)
    core.woken.clear()
    waiters = [Waiter[object](None, n, None, 0, 1.0, deadline=2.0) for n in range(50)]
    for waiter in waiters:
        assert core.acquire(1.0, waiter) is None
    summaries = 0
    real_of = _pool_core.DurationSummary.of

    def counting_of(*args: Any, **kwargs: Any) -> Any:
        nonlocal summaries
        summaries += 1
        return real_of(*args, **kwargs)

    monkeypatch.setattr(_pool_core.DurationSummary, "of", counting_of)
    assert core.expire(3.0) == math.inf
    assert summaries == 0  # nobody has read the statistics yet
    errors = [waiter.grant for waiter in waiters]
    assert core.woken == waiters
    for error in errors:
        assert isinstance(error, PoolTimeout)
        assert str(error).startswith("pool 'crowded': no resource free after 2.000s")
        assert [h.resource for h in error.holders] == [held.resource]
        assert error.stats is not None
        assert error.stats.timeouts == 50
        assert error.stats.waiting == 0
    assert summaries == 2  # the waits and the holds, once for all fifty


def test_expire_without_describing_leaves_the_errors_to_the_waiters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """expire(describe=False), for the threaded shell: the waiters whose deadline passed
    leave the line, counted as timeouts, and are woken with TIMED_OUT; the pool is not
    described (no holder's line number looked up), since each waiter builds its error
    itself; a waiter whose deadline is still ahead keeps its place, and its deadline is
    the next one."""
    core = bare_core("described later", min_size=0, max_size=1)
    first = Waiter[object](None, "holder", None, 0, 0.0)
    assert core.acquire(0.0, first) is CREATE
    core.created(object(), 0.0, first)
    core.woken.clear()
    late = [Waiter[object](None, n, None, 0, 1.0, deadline=2.0) for n in range(3)]
    patient = Waiter[object](None, "patient", None, 0, 1.0, deadline=9.0)
    for waiter in [*late, patient]:
        assert core.acquire(1.0, waiter) is None
    monkeypatch.setattr(_pool_core, "code_site", None)  # describing would fail
    assert core.expire(3.0, describe=False) == 9.0
    assert [waiter.grant for waiter in late] == [TIMED_OUT] * 3
    assert core.woken == late
    assert patient.grant is None
    stats = core.stats()
    assert (stats.timeouts, stats.waiting) == (3, 1)


@pytest.mark.parametrize("gave_up_by", ["timeout", "cancellation"])
def test_a_resource_made_for_a_caller_that_gave_up_a_moment_later_is_not_lost(
    gave_up_by: str,
) -> None:
    """The creation finished and its resource was handed to the caller, which gave up
    before it could run: a caller whose deadline passed gets the resource after all
    (abandon_creation returns it), a cancelled one passes it on to the next in line."""
    core = bare_core("late", min_size=0, max_size=1)
    caller = Waiter[object](None, "caller", None, 0, 0.0, deadline=1.0)
    assert core.acquire(0.0, caller) is CREATE
    next_in_line = Waiter[object](None, "next", None, 0, 0.5)
    assert core.acquire(0.5, next_in_line) is None
    made = core.created(object(), 1.0, caller)
    assert caller.grant is made
    handed = core.abandon_creation(caller, 1.0, timed_out=gave_up_by == "timeout")
    if gave_up_by == "timeout":
        assert handed is made
        assert next_in_line.grant is None
        assert core.stats().in_use == 1
    else:
        assert handed is None
        assert next_in_line.grant is made
        assert core.stats().acquired == 1  # the cancelled caller's hand-out is not counted
    assert core.stats().timeouts == 0


def test_a_resource_given_back_unused_by_a_caller_that_gave_up_is_not_charged_a_use() -> None:
    """With max_uses, a resource handed to a waiter that gives up before it could use it
    (cancelled, or a timeout racing the hand-over) goes back uncharged: it still serves
    max_uses real callers before it retires."""
    core = bare_core("uses", min_size=0, max_size=1, max_uses=2)
    holder = Waiter[object](None, "holder", None, 0, 0.0)
    assert core.acquire(0.0, holder) is CREATE
    slot = core.created(object(), 0.0, holder)
    waiter = Waiter[object](None, "waiter", None, 0, 0.0)
    assert core.acquire(0.0, waiter) is None
    core.release(slot, slot.lease, 1.0)  # the first real use ends; the waiter is handed it
    assert waiter.grant is slot
    core.cancel_wait(waiter, 1.0, timed_out=False)  # it gave up before it could run
    assert (list(core.idle), core.doomed) == ([slot], [])
    taken = core.take(1.0)  # the second real use
    assert taken is slot
    core.release(slot, slot.lease, 2.0)
    assert (list(core.idle), core.doomed) == ([], [slot])  # spent after two real uses
    assert core.stats().acquired == 2


def test_a_resource_given_back_unchecked_by_a_caller_that_gave_up_stays_due_its_check() -> None:
    """A resource due its check, handed to a caller that gives up before checking it (its
    deadline came first), goes back as it was: idle since its last real use, so still due
    its check. The next caller checks it instead of taking it unchecked on the fast
    path."""
    core = bare_core("unchecked", min_size=0, max_size=1, has_check=True)
    first = Waiter[object](None, "first", None, 0, 0.0)
    assert core.acquire(0.0, first) is CREATE
    slot = core.created(object(), 0.0, first)
    core.release(slot, slot.lease, 0.0)  # idle from 0.0; its check is due from 1.0
    hasty = Waiter[object](None, "hasty", None, 0, 4.5, deadline=5.0)
    assert core.acquire(5.0, hasty) is slot
    assert core.needs_check(slot, 5.0)
    assert core.out_of_time_to_check(hasty, 5.0)  # its deadline came: it gives up
    assert list(core.idle) == [slot]
    assert core.take(5.0) is None  # not handed out unchecked on the fast path
    patient = Waiter[object](None, "patient", None, 0, 5.0, deadline=10.0)
    assert core.acquire(5.0, patient) is slot
    assert core.needs_check(slot, 5.0)
    assert (core.stats().timeouts, core.stats().acquired) == (1, 2)  # hasty's not counted


def test_a_caller_with_timeout_zero_has_its_check_bounded_by_nothing_but_the_check() -> None:
    """timeout=0 (a deadline equal to the moment of asking) means "do not wait in line":
    such a caller is never out of time to check an idle resource, and its check has no
    deadline of the pool's; a caller that waited has its own deadline for the check, and
    once that has passed no check starts."""
    core = bare_core("zero", min_size=0, max_size=1, has_check=True)
    now_only = Waiter[object](None, "now only", None, 0, 5.0, deadline=5.0)
    waited = Waiter[object](None, "waited", None, 0, 4.0, deadline=5.0)
    assert core.check_deadline(now_only) == float("inf")
    assert core.check_deadline(waited) == 5.0
    assert not core.out_of_time_to_check(now_only, 7.0)
    assert not core.out_of_time_to_check(waited, 4.9)


def test_a_waiter_without_a_deadline_back_at_the_head_hides_no_deadline_behind_it() -> None:
    """A caller without a deadline whose resource failed its check waits again at the head
    of the line, out of deadline order: the callers that queue behind it with a deadline
    still time out on time."""
    core = bare_core("head", min_size=0, max_size=1, has_check=True)
    first = Waiter[object](None, "first", None, 0, 0.0)
    assert core.acquire(0.0, first) is CREATE
    slot = core.created(object(), 0.0, first)
    core.release(slot, slot.lease, 0.0)
    patient = Waiter[object](None, "patient", None, 0, 5.0)  # no deadline
    assert core.acquire(5.0, patient) is slot
    assert core.check_failed(slot, patient, 5.0) is None  # back at the head of the line
    hasty = Waiter[object](None, "hasty", None, 0, 5.0, deadline=6.0)
    assert core.acquire(5.0, hasty) is None
    assert core.expire(5.5) == 6.0
    core.woken.clear()
    assert core.expire(6.0) == math.inf
    assert core.woken == [hasty]
    assert isinstance(hasty.grant, PoolTimeout)
    assert patient.grant is None
    assert core.stats().waiting == 1
