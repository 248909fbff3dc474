"""The soak's and the kill points' loop driver (harness/loop.py) stops where it is told to.

Found by the 100-round soak (seed 18): in round 48 the worker meant to be killed made fewer
store calls than its kill point (a cycle failed early), so it finished the round itself; the
recovering worker, sent the same `until` ("48:escalation_sensor#0", already over), ran every
remaining round (49..102) at once, before the trading app had made round 49's drift. Nothing
reconciled the drifts of rounds 49..61 afterwards: each later job found the loop done.
"""

import pytest

from recon_assets_tests.harness.loop import CALLS, LoopDriver

pytestmark = pytest.mark.unit


class TickOnly(LoopDriver):
    """The driver with ticks that request no runs (no Dagster, no instance needed)."""

    def __init__(self, home):
        super().__init__(defs=None, home=home)
        self.ticked: list[str] = []

    def _schedule_tick(self, instance) -> list[dict]:
        self.ticked.append(CALLS.step)
        return []

    def _sensor_tick(self, instance, name: str) -> list[dict]:
        self.ticked.append(CALLS.step)
        return []


def test_a_run_stops_at_the_end_of_until(tmp_path):
    driver = TickOnly(tmp_path)
    driver.run(5, instance=None, until="1:escalation_sensor#0")
    assert driver.ticked == [f"{key}#0" for key in driver.steps(2)]
    assert driver.journal["done"][-1] == "1:escalation_sensor"


def test_a_run_whose_until_is_already_over_does_nothing(tmp_path):
    # The killed worker's kill never landed: it finished round 1 itself.
    TickOnly(tmp_path).run(5, instance=None, until="1:escalation_sensor#0")
    recovering = TickOnly(tmp_path)  # the recovering worker, sent the same job
    recovering.run(5, instance=None, until="1:escalation_sensor#0")
    assert recovering.ticked == []
    assert recovering.journal["done"][-1] == "1:escalation_sensor"


def test_the_next_round_goes_on_from_there(tmp_path):
    TickOnly(tmp_path).run(5, instance=None, until="1:escalation_sensor#0")
    TickOnly(tmp_path).run(5, instance=None, until="1:escalation_sensor#0")
    driver = TickOnly(tmp_path)
    driver.run(5, instance=None, until="2:escalation_sensor#0")
    assert driver.ticked == [f"{key}#0" for key in driver.steps(3)[len(driver.steps(2)):]]


def test_without_until_every_round_runs(tmp_path):
    driver = TickOnly(tmp_path)
    driver.run(3, instance=None)
    assert driver.journal["done"] == driver.steps(3)
