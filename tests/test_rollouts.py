"""A staged rollout's decisions (host/brewmeter/cloud/rollouts.py), with plain data: the
stable order and the percentage, nested stages that advance only once their machines
finished, the halt on the failure rate, and the operator's pause, resume and stop."""

from __future__ import annotations

import pytest
from brewmeter.cloud import rollouts as R

FLEET = [f"bm-{i:04d}" for i in range(200)]


def rollout(machines, stages=(0.01, 0.10, 1.0), rate=0.2, **kw) -> R.Rollout:
    return R.Rollout("r1", tuple(R.order("r1", machines)), tuple(stages), rate, **kw)


def test_the_order_is_stable_and_differs_between_rollouts():
    assert R.order("r1", FLEET) == R.order("r1", list(reversed(FLEET)))
    assert R.order("r1", FLEET) != R.order("r2", FLEET)
    assert sorted(R.order("r1", FLEET)) == FLEET


def test_a_percentage_is_the_head_of_the_order_and_grows_by_nesting():
    ten = R.percent_of("r1", FLEET, 10)
    assert len(ten) == 20 and ten == R.percent_of("r1", FLEET, 10)
    assert R.percent_of("r1", FLEET, 25)[:20] == ten
    # a machine added to the fleet moves no machine out of another's place
    assert set(R.percent_of("r1", FLEET + ["bm-new"], 100)) == set(FLEET) | {"bm-new"}
    assert len(R.percent_of("r1", FLEET[:3], 1)) == 1  # at least one machine
    assert R.percent_of("r1", [], 50) == []


def test_stages_nest_and_advance_only_once_their_machines_finished():
    r = rollout(FLEET)
    d = R.decide(r, {})
    assert (d.state, d.stage, d.offer) == ("running", 1, r.machines[:2])  # 1 % of 200
    states = {m: "trial" for m in r.machines[:2]}
    assert R.decide(r, states).offer == r.machines[:2]  # on trial: not healthy yet
    assert R.decide(r, states).stage == 1
    states[r.machines[0]] = "done"
    assert R.decide(r, states).stage == 1
    states[r.machines[1]] = "done"
    d = R.decide(r, states)
    assert d.stage == 2 and d.offer == r.machines[2:20]  # 10 %: stage 1's done are not
    assert set(r.machines[:2]) < set(r.machines[:20])
    states |= {m: "done" for m in r.machines[:20]}
    d = R.decide(r, states)
    assert d.stage == 3 and d.offer == r.machines[20:]
    d = R.decide(r, {m: "done" for m in r.machines})
    assert (d.state, d.stage, d.offer, d.done) == ("complete", 3, (), 200)


def test_failures_over_the_threshold_halt_it_by_themselves():
    r = rollout(FLEET[:20], stages=(0.25, 1.0), rate=0.2)  # stage 1: 5 machines
    first = r.machines[:5]
    d = R.decide(r, {first[0]: "done", first[1]: "failed"})
    assert d.halt and d.state == "halted" and d.offer == ()  # 1 of 2 finished failed
    assert d.failure_rate == 0.5 and (d.done, d.failed, d.finished) == (1, 1, 2)
    # within the threshold: the failed machine is finished, never offered again
    states = {m: "done" for m in first[:4]} | {first[4]: "failed"}
    d = R.decide(r, states)
    assert not d.halt and d.state == "running" and d.stage == 2
    assert d.offer == r.machines[5:] and first[4] not in d.offer
    # halted once, it stays halted even if later reports bring the rate down
    r2 = R.Rollout(r.id, r.machines, r.stages, r.max_failure_rate, halted=True)
    assert R.decide(r2, {m: "done" for m in r.machines}).state == "halted"


def test_pause_resume_and_stop():
    r = rollout(FLEET[:10], stages=(0.5, 1.0))
    assert R.control("running", "running", "pause") == "paused"
    paused = R.Rollout(r.id, r.machines, r.stages, r.max_failure_rate, control="paused")
    d = R.decide(paused, {})
    assert d.state == "paused" and d.offer == ()
    assert R.control("paused", "paused", "resume") == "running"
    assert R.control("paused", "paused", "stop") == "stopped"
    stopped = R.Rollout(r.id, r.machines, r.stages, r.max_failure_rate, control="stopped")
    assert R.decide(stopped, {}).state == "stopped" and R.decide(stopped, {}).offer == ()
    for current, decided, action in (("running", "running", "resume"),
                                     ("paused", "paused", "pause"),
                                     ("stopped", "stopped", "resume"),
                                     ("running", "halted", "resume"),
                                     ("running", "complete", "stop"),
                                     ("running", "running", "go")):
        with pytest.raises(ValueError):
            R.control(current, decided, action)


def test_a_list_of_machines_or_an_owners_are_the_rollouts_targets_whole():
    alice = ["bm-alice1", "bm-alice2", "bm-alice3"]
    r = rollout(alice, stages=(1.0,))
    assert set(R.decide(r, {}).offer) == set(alice)
    r = rollout(alice, stages=(0.5, 1.0))  # half of 3: two machines
    assert len(R.decide(r, {}).offer) == 2


def test_a_machine_already_on_the_version_is_done_and_a_report_wins():
    assert R.state_of(None, "0.2.0", "0.2.0") == "done"
    assert R.state_of(None, "0.1.0", "0.2.0") == "none"
    assert R.state_of("failed", "0.1.0", "0.2.0") == "failed"


@pytest.mark.parametrize("stages,ok", [((1.0,), True), ((0.01, 0.1, 1.0), True),
                                       ((0.5,), False), ((0.5, 0.5, 1.0), False),
                                       ((0.5, 0.2, 1.0), False), ((0, 1.0), False),
                                       ((), False), ((True,), False), ((1.5,), False)])
def test_stages_are_checked(stages, ok):
    assert (R.check_stages(stages) is None) == ok


def test_a_stage_is_at_least_one_machine_and_rounds_up():
    assert [R.head(200, f) for f in (0.01, 0.1, 1.0)] == [2, 20, 200]
    assert R.head(30, 0.1) == 3 and R.head(5, 0.01) == 1 and R.head(0, 0.5) == 0
