"""When the registrar cuts a partial batch: a trickle after the linger, a filling batch later."""

from oxidicom_py.registry.batch_items import LOAD_LINGER, LOAD_ROWS, due_at


def test_a_trickle_is_due_after_the_linger_and_a_filling_batch_waits_longer() -> None:
    assert due_at(10.0, 1, 0.02) == 10.02
    assert due_at(10.0, LOAD_ROWS - 1, 0.02) == 10.02
    assert due_at(10.0, LOAD_ROWS, 0.02) == 10.0 + 0.02 * LOAD_LINGER
    assert due_at(10.0, 1000, 0.0) == 10.0  # linger 0: nothing ever waits
