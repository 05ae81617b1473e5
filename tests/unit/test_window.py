"""The start window: opens while starts stay quick, closes when more in flight only queue."""

import threading

from corunner.window import FLOOR, INITIAL, Gate, Window


def simulate(window: Window, latency, completions: int) -> list:
    """Feed ``completions`` starts whose time is ``latency(size in flight)``; the sizes seen."""
    sizes = []
    for _ in range(completions):
        sizes.append(window.done(latency(window.size)))
    return sizes


def test_on_nodes_with_their_own_cpus_the_window_opens_to_the_ceiling():
    window = Window(64)
    assert window.size == INITIAL
    simulate(window, lambda w: 0.7, 200)  # starts take as long however many run
    assert window.size == 64


def test_when_starts_share_a_saturated_machine_the_window_settles_small():
    # Past ~5 in flight, each start waits for the others: latency grows with the window.
    window = Window(64)
    sizes = simulate(window, lambda w: max(0.7, 0.16 * w), 400)
    assert max(sizes[-100:]) <= 12
    assert min(sizes[-100:]) >= FLOOR


def test_the_window_never_passes_the_ceiling_nor_the_floor():
    assert Window(2).size == 2
    w = Window(64)
    simulate(w, lambda size: 0.5, 20)
    simulate(w, lambda size: 1000.0, 200)  # the fleet suddenly crawls: back to the floor
    assert w.size == FLOOR
    w = Window(3)
    simulate(w, lambda size: 0.5, 50)
    assert w.size == 3


def test_the_gate_lets_no_more_than_the_window_through_and_closes():
    window = Window(64)
    window.size = 2
    gate = Gate(window)
    assert gate.enter() and gate.enter()
    entered = []
    waiter = threading.Thread(target=lambda: entered.append(gate.enter()))
    waiter.start()
    waiter.join(0.05)
    assert waiter.is_alive()  # a third waits for room
    gate.close()
    waiter.join(5)
    assert entered == [False]  # closed while waiting: it must not start
    assert gate.peak == 2
