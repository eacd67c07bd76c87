"""The adaptive batcher on its own: joining and splitting rows, timing, the in-flight cap,
failures that stay with the request that caused them, and callers that give up.

The model is a plain function that records every batch it receives; its answer for a row is
derived from the row's first value (a unique id per row), so a row that came back to the wrong
caller, or in the wrong order, shows.
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pytest
from prometheus_client import REGISTRY

from berth.runtimes.base import ModelInput, Prediction, row_count
from berth.serving.batcher import Batcher, join, split
from tests.conftest import until

CLASSES = ["low", "high"]
KINDS = ["array", "frame", "dict"]


def _ids(inputs: ModelInput) -> np.ndarray[Any, Any]:
    """The first value of every row: the row's id."""
    if isinstance(inputs, pd.DataFrame):
        return inputs["id"].to_numpy(dtype=np.float64)
    if isinstance(inputs, dict):
        return inputs["a"][:, 0].astype(np.float64)
    return inputs[:, 0].astype(np.float64)


def answer(inputs: ModelInput) -> Prediction:
    """What the fake model answers for `inputs` when called with them alone."""
    ids = _ids(inputs)
    return Prediction(
        predictions=ids * 10,
        probabilities=np.column_stack([ids, -ids]),
        classes=list(CLASSES),
    )


@dataclass
class FakeModel:
    """A model that records the batches it gets; it can fail on a poison row or miscount."""

    poison: float | None = None
    """Raise when any row has this id (a request the model cannot predict)."""
    short_above: int | None = None
    """Return one row too few for calls with more rows than this (a buggy batch path)."""
    calls: list[ModelInput] = field(default_factory=list)

    def __call__(self, inputs: ModelInput) -> Prediction:
        self.calls.append(inputs)
        ids = _ids(inputs)
        if self.poison is not None and bool((ids == self.poison).any()):
            raise ValueError(f"row {self.poison} is poison")
        prediction = answer(inputs)
        if self.short_above is not None and len(ids) > self.short_above:
            assert prediction.probabilities is not None
            return Prediction(
                prediction.predictions[:-1], prediction.probabilities[:-1], prediction.classes
            )
        return prediction

    @property
    def sizes(self) -> list[int]:
        return [row_count(c) for c in self.calls]


def rows(ids: list[float], kind: str = "array") -> ModelInput:
    """Validated-looking model input whose rows carry `ids` as their first value."""
    if kind == "frame":
        return pd.DataFrame(
            {
                "id": np.array(ids, dtype=np.float64),
                "name": [f"row {i}" for i in ids],
                "count": np.arange(len(ids), dtype=np.int64),
            }
        )
    if kind == "dict":
        return {
            "a": np.array([[i, 2 * i] for i in ids], dtype=np.float32),
            "b": np.array([i + 0.5 for i in ids], dtype=np.float64),
        }
    return np.array([[i, i + 0.5, 0.0, 1.0] for i in ids], dtype=np.float64)


def request_ids(counts: list[int]) -> list[list[float]]:
    """Unique ids for requests of `counts` rows: request k holds 100k+1, 100k+2, ..."""
    return [[100.0 * k + j + 1 for j in range(count)] for k, count in enumerate(counts)]


PredictFn = Callable[[ModelInput], Prediction]


async def inline(predict: PredictFn, inputs: ModelInput) -> Prediction:
    return predict(inputs)


@dataclass
class SlowRunner:
    """Runs each model call after `seconds` (or once `gate` is set), tracking how many calls
    run at once."""

    seconds: float
    running: int = 0
    peak: int = 0
    gate: asyncio.Event | None = None

    async def __call__(self, predict: PredictFn, inputs: ModelInput) -> Prediction:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if self.gate is None:
                await asyncio.sleep(self.seconds)
            else:
                await self.gate.wait()
            return predict(inputs)
        finally:
            self.running -= 1


Runner = Callable[[PredictFn, ModelInput], Awaitable[Prediction]]


def make_batcher(
    model: FakeModel,
    run: Runner = inline,
    *,
    size: int = 32,
    latency: float = 0.02,
    in_flight: int = 2,
    labels: tuple[str, str] | None = None,
) -> Batcher:
    return Batcher(
        lambda inputs: run(model, inputs),
        max_batch_size=size,
        max_latency_seconds=latency,
        max_in_flight=in_flight,
        labels=labels or (f"batcher-test-{uuid.uuid4().hex[:8]}", "1"),
    )


def assert_same(got: Prediction, expected: Prediction) -> None:
    np.testing.assert_array_equal(got.predictions, expected.predictions)
    assert got.probabilities is not None
    assert expected.probabilities is not None
    np.testing.assert_array_equal(got.probabilities, expected.probabilities)
    assert got.classes == expected.classes


def assert_same_input(got: ModelInput, expected: ModelInput) -> None:
    if isinstance(expected, pd.DataFrame):
        assert isinstance(got, pd.DataFrame)
        pd.testing.assert_frame_equal(got, expected)
    elif isinstance(expected, dict):
        assert isinstance(got, dict)
        assert sorted(got) == sorted(expected)
        for name, array in expected.items():
            assert got[name].dtype == array.dtype
            np.testing.assert_array_equal(got[name], array)
    else:
        assert isinstance(got, np.ndarray)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


async def submit_all(batcher: Batcher, inputs: list[ModelInput]) -> list[Any]:
    """Submit every input at once (in order); failures come back as exceptions."""
    return await asyncio.gather(*(batcher.submit(x) for x in inputs), return_exceptions=True)


def _sample(name: str, labels: tuple[str, str]) -> float:
    value = REGISTRY.get_sample_value(name, {"model": labels[0], "version": labels[1]})
    return value or 0.0


# ---------------------------------------------------------------------------- join and split


@pytest.mark.parametrize("kind", KINDS)
def test_join_concatenates_along_the_batch_axis(kind: str) -> None:
    parts = [rows(ids, kind) for ids in request_ids([1, 3, 2])]
    joined = join(parts)
    assert row_count(joined) == 6
    expected = rows([1.0, 101.0, 102.0, 103.0, 201.0, 202.0], kind)
    if isinstance(expected, pd.DataFrame):
        # each request's frame is numbered from 0; the joined one is numbered 0..5 again
        expected["count"] = np.array([0, 0, 1, 2, 0, 1], dtype=np.int64)
        assert isinstance(joined, pd.DataFrame)
        assert list(joined.index) == list(range(6))
    assert_same_input(joined, expected)


def test_split_gives_each_request_its_rows_in_order() -> None:
    ids = request_ids([1, 3, 2])
    whole = answer(rows([i for part in ids for i in part]))
    parts = split(whole, [1, 3, 2])
    assert len(parts) == 3
    for part, own in zip(parts, ids, strict=True):
        assert_same(part, answer(rows(own)))
    without = split(Prediction(predictions=np.arange(5)), [2, 3])
    assert [p.predictions.tolist() for p in without] == [[0, 1], [2, 3, 4]]
    assert [p.probabilities for p in without] == [None, None]


def test_split_keeps_multi_output_predictions_whole_per_row() -> None:
    predictions = np.arange(12).reshape(6, 2)
    first, second = split(Prediction(predictions=predictions), [4, 2])
    assert first.predictions.tolist() == predictions[:4].tolist()
    assert second.predictions.tolist() == [[8, 9], [10, 11]]


@pytest.mark.parametrize(
    "prediction",
    [
        Prediction(predictions=np.arange(5)),
        Prediction(predictions=np.arange(7)),
        Prediction(predictions=np.arange(6), probabilities=np.zeros((5, 2))),
    ],
    ids=["too few predictions", "too many predictions", "too few probabilities"],
)
def test_split_refuses_a_prediction_with_the_wrong_row_count(prediction: Prediction) -> None:
    with pytest.raises(ValueError, match="for 6 rows"):
        split(prediction, [1, 3, 2])


# ---------------------------------------------------------------------------- joining requests


@pytest.mark.parametrize("kind", KINDS)
def test_concurrent_requests_of_mixed_rows_share_one_call_and_get_their_own_rows(
    kind: str,
) -> None:
    counts = [1, 3, 2, 1, 4]
    inputs = [rows(ids, kind) for ids in request_ids(counts)]
    model = FakeModel()

    results = asyncio.run(submit_all(make_batcher(model), inputs))

    assert model.sizes == [sum(counts)]  # one model call for every request
    assert_same_input(model.calls[0], join(inputs))  # joined in the order they arrived
    for result, own in zip(results, inputs, strict=True):
        assert isinstance(result, Prediction)
        assert row_count(own) == len(result.predictions)
        assert_same(result, answer(own))


def test_max_batch_size_is_never_exceeded_and_every_row_is_predicted_once() -> None:
    counts = [1, 3, 2, 2, 1, 3, 4, 1]
    inputs = [rows(ids) for ids in request_ids(counts)]
    model = FakeModel()

    results = asyncio.run(submit_all(make_batcher(model, size=4), inputs))

    assert max(model.sizes) <= 4
    assert len(model.calls) < len(counts)  # still joined where they fit
    predicted = sorted(i for call in model.calls for i in _ids(call).tolist())
    assert predicted == sorted(i for ids in request_ids(counts) for i in ids)
    for result, own in zip(results, inputs, strict=True):
        assert isinstance(result, Prediction)
        assert_same(result, answer(own))


def test_a_request_over_the_limit_runs_alone_and_whole() -> None:
    """The dataplane sends such requests past the batcher; given one anyway, it is not split."""
    big, small = (rows(ids) for ids in request_ids([6, 1]))
    model = FakeModel()

    results = asyncio.run(submit_all(make_batcher(model, size=4), [big, small]))

    assert model.sizes == [6, 1]
    assert_same(results[0], answer(big))
    assert_same(results[1], answer(small))


def test_a_lone_request_waits_about_max_latency_then_runs_alone() -> None:
    model = FakeModel()
    labels = (f"batcher-test-{uuid.uuid4().hex[:8]}", "1")
    batcher = make_batcher(model, latency=0.1, labels=labels)
    one = rows([7.0])

    async def timed() -> tuple[Prediction, float]:
        started = time.perf_counter()
        result = await batcher.submit(one)
        return result, time.perf_counter() - started

    result, elapsed = asyncio.run(timed())

    # At least the 0.1 s wait; the upper bound only says it is not left waiting for more rows
    # (a loaded machine can add tens of milliseconds).
    assert 0.095 <= elapsed < 1.0
    assert model.sizes == [1]
    assert_same(result, answer(one))
    waited = _sample("berth_batch_queue_wait_seconds_sum", labels)
    assert 0.095 <= waited < 1.0


def test_a_full_batch_runs_at_once_without_waiting_for_the_timer() -> None:
    model = FakeModel()
    batcher = make_batcher(model, size=8, latency=5.0)
    first, second = (rows(ids) for ids in request_ids([3, 5]))

    async def scenario() -> tuple[list[Any], float]:
        started = time.perf_counter()
        results = await submit_all(batcher, [first, second])
        return results, time.perf_counter() - started

    results, elapsed = asyncio.run(scenario())

    assert elapsed < 1.0  # not the 5 s timer
    assert model.sizes == [8]
    assert batcher.queued == 0
    assert_same(results[0], answer(first))
    assert_same(results[1], answer(second))


def test_after_a_full_batch_the_next_request_waits_its_own_max_latency() -> None:
    """The timer of the batch that filled up is cancelled, not left to cut the next wait short."""
    model = FakeModel()
    batcher = make_batcher(model, size=8, latency=0.2)
    first, filler, late = (rows(ids) for ids in request_ids([1, 7, 1]))

    async def scenario() -> float:
        lone = asyncio.create_task(batcher.submit(first))  # starts the 0.2 s timer
        await asyncio.sleep(0.1)
        await batcher.submit(filler)  # fills the batch: it runs at once
        assert lone.done()
        started = time.perf_counter()
        await batcher.submit(late)  # the first timer would fire in 0.1 s
        return time.perf_counter() - started

    waited = asyncio.run(scenario())

    assert model.sizes == [8, 1]
    assert waited >= 0.18


# ---------------------------------------------------------------------------- in flight


@pytest.mark.parametrize(("cap", "expected_peak"), [(1, 1), (2, 2)])
def test_while_max_in_flight_batches_run_later_requests_form_a_bigger_batch(
    cap: int, expected_peak: int
) -> None:
    model = FakeModel()
    # Batches run until the test lets them finish, so no stall of the machine can end the
    # first one before the later requests are in.
    runner = SlowRunner(0.0, gate=asyncio.Event())
    batcher = make_batcher(model, runner, latency=0.01, in_flight=cap)
    first, *later = (rows(ids) for ids in request_ids([1, 1, 2, 1]))
    second, *others = later

    async def scenario() -> list[Any]:
        assert runner.gate is not None
        tasks = [asyncio.create_task(batcher.submit(first))]
        await until(lambda: runner.running == 1, "the first batch running")
        tasks.append(asyncio.create_task(batcher.submit(second)))
        if cap == 2:
            # the second has a slot of its own
            await until(lambda: runner.running == 2, "the second batch running")
        for inputs in others:
            tasks.append(asyncio.create_task(batcher.submit(inputs)))
        await asyncio.sleep(0.05)  # past the later requests' 10 ms wait: they queue
        runner.gate.set()
        return await asyncio.gather(*tasks)

    results = asyncio.run(scenario())

    assert runner.peak == expected_peak
    if cap == 1:
        # the three later requests waited for the running batch, then ran as one
        assert model.sizes == [1, 4]
    else:
        assert model.sizes == [1, 1, 3]  # the second ran alone beside the first
    for result, own in zip(results, [first, *later], strict=True):
        assert_same(result, answer(own))


# ---------------------------------------------------------------------------- failures


@pytest.mark.parametrize("kind", KINDS)
def test_a_faulty_request_in_a_batch_fails_alone(kind: str) -> None:
    good, poisoned, other = request_ids([1, 2, 3])
    poisoned[1] = -1.0
    inputs = [rows(good, kind), rows(poisoned, kind), rows(other, kind)]
    model = FakeModel(poison=-1.0)

    results = asyncio.run(submit_all(make_batcher(model), inputs))

    assert isinstance(results[1], ValueError)
    assert "poison" in str(results[1])
    assert_same(results[0], answer(inputs[0]))
    assert_same(results[2], answer(inputs[2]))
    # one joined call that failed, then each request alone
    assert model.sizes == [6, 1, 2, 3]


def test_a_faulty_request_does_not_affect_the_next_batch() -> None:
    model = FakeModel(poison=-1.0)
    batcher = make_batcher(model)

    async def scenario() -> list[Any]:
        first = await submit_all(batcher, [rows([-1.0]), rows([1.0])])
        second = await submit_all(batcher, [rows([2.0]), rows([3.0, 4.0])])
        return [*first, *second]

    results = asyncio.run(scenario())

    assert isinstance(results[0], ValueError)
    assert_same(results[1], answer(rows([1.0])))
    assert_same(results[2], answer(rows([2.0])))
    assert_same(results[3], answer(rows([3.0, 4.0])))
    assert model.sizes == [2, 1, 1, 3]  # the second batch joined normally


def test_a_batch_answer_with_the_wrong_row_count_is_retried_per_request() -> None:
    inputs = [rows(ids) for ids in request_ids([1, 2, 3])]
    model = FakeModel(short_above=3)  # drops a row when called with more than 3

    results = asyncio.run(submit_all(make_batcher(model), inputs))

    assert model.sizes == [6, 1, 2, 3]
    for result, own in zip(results, inputs, strict=True):
        assert_same(result, answer(own))


# ---------------------------------------------------------------------------- shapes


def _other(variant: str) -> ModelInput:
    """An input of one row whose shape differs from `rows([...], kind)` in one way."""
    frame = rows([2.0], "frame")
    assert isinstance(frame, pd.DataFrame)
    variants: dict[str, ModelInput] = {
        "width": np.array([[2.0, 0.0, 0.0]]),  # width 3 against width 4
        "dtype": np.array([[2.0, 0.0, 0.0, 1.0]], dtype=np.float32),  # same width
        "columns": frame.drop(columns="name"),
        "column dtype": frame.astype({"count": np.int32}),
        "names": {
            "a": np.array([[2.0, 4.0]], np.float32),
            "b": np.array([2.5]),
            "c": np.zeros(1),
        },
        "named width": {"a": np.array([[2.0, 4.0, 0.0]], np.float32), "b": np.array([2.5])},
    }
    return variants[variant]


@pytest.mark.parametrize(
    ("kind", "variant"),
    [
        ("array", "width"),
        ("array", "dtype"),
        ("frame", "columns"),
        ("frame", "column dtype"),
        ("dict", "names"),
        ("dict", "named width"),
    ],
)
def test_inputs_of_different_trailing_shapes_are_not_joined(kind: str, variant: str) -> None:
    one, other, same = rows([1.0], kind), _other(variant), rows([3.0, 4.0], kind)
    model = FakeModel()

    results = asyncio.run(submit_all(make_batcher(model), [one, other, same]))

    # the first and third share a shape and are joined; the second runs on its own
    assert model.sizes == [3, 1]
    assert_same_input(model.calls[0], join([one, same]))
    assert_same_input(model.calls[1], other)
    for result, own in zip(results, [one, other, same], strict=True):
        assert_same(result, answer(own))


# ---------------------------------------------------------------------------- metrics


def test_batch_size_and_queue_wait_are_recorded() -> None:
    labels = (f"batcher-test-{uuid.uuid4().hex[:8]}", "3")
    model = FakeModel()
    batcher = make_batcher(model, latency=0.03, labels=labels)
    inputs = [rows(ids) for ids in request_ids([1, 3, 2])]

    asyncio.run(submit_all(batcher, inputs))

    assert model.sizes == [6]
    assert _sample("berth_batch_size_count", labels) == 1  # one call...
    assert _sample("berth_batch_size_sum", labels) == 6  # ...of six rows
    assert (
        REGISTRY.get_sample_value(
            "berth_batch_size_bucket", {"model": labels[0], "version": "3", "le": "4.0"}
        )
        == 0
    )
    assert _sample("berth_batch_queue_wait_seconds_count", labels) == 3  # one per request
    waited = _sample("berth_batch_queue_wait_seconds_sum", labels)
    assert 3 * 0.025 <= waited < 3 * 0.2


# ---------------------------------------------------------------------------- callers that give up


@pytest.mark.parametrize("when", ["while queued", "while its batch runs"])
def test_a_cancelled_caller_does_not_break_the_batch_or_leave_a_warning(when: str) -> None:
    model = FakeModel(poison=-1.0)  # the cancelled request fails too: nobody reads it
    runner = SlowRunner(0.05)
    batcher = make_batcher(model, runner, latency=0.05)
    keep, gone_rows, other = (rows(ids) for ids in [[1.0], [-1.0], [2.0, 3.0]])

    async def scenario() -> tuple[list[Prediction], list[dict[str, Any]], list[dict[str, Any]]]:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))

        # The detector works: an unread failure is reported when collected.
        control: asyncio.Future[None] = loop.create_future()
        control.set_exception(ValueError("never read"))
        del control
        gc.collect()
        detected = list(reported)
        reported.clear()

        tasks = [asyncio.create_task(batcher.submit(x)) for x in (keep, gone_rows, other)]
        await asyncio.sleep(0.01 if when == "while queued" else 0.07)
        assert (runner.running == 1) == (when == "while its batch runs")
        gone = tasks.pop(1)
        gone.cancel()
        results = await asyncio.gather(*tasks)
        with pytest.raises(asyncio.CancelledError):
            await gone
        await batcher.close()
        del gone, tasks
        await asyncio.sleep(0)
        gc.collect()
        return results, detected, reported

    results, detected, reported = asyncio.run(scenario())

    assert any("never retrieved" in str(c.get("message")) for c in detected)
    assert [str(c.get("message")) for c in reported] == []
    assert_same(results[0], answer(keep))
    assert_same(results[1], answer(other))
    # the cancelled request was still predicted with the others (its result is dropped)
    assert model.sizes[0] == 4


def test_a_cancelled_caller_of_a_successful_batch_is_simply_dropped() -> None:
    model = FakeModel()
    batcher = make_batcher(model, SlowRunner(0.05), latency=0.02)
    inputs = [rows(ids) for ids in request_ids([2, 1, 3])]

    async def scenario() -> list[Any]:
        tasks = [asyncio.create_task(batcher.submit(x)) for x in inputs]
        await asyncio.sleep(0.03)
        tasks[0].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(scenario())

    assert isinstance(results[0], asyncio.CancelledError)
    assert model.sizes == [6]
    assert_same(results[1], answer(inputs[1]))
    assert_same(results[2], answer(inputs[2]))


def test_close_waits_for_the_batches_already_running() -> None:
    model = FakeModel()
    runner = SlowRunner(0.1)
    batcher = make_batcher(model, runner, latency=0.0)

    async def scenario() -> bool:
        task = asyncio.create_task(batcher.submit(rows([1.0])))
        await asyncio.sleep(0.02)
        assert runner.running == 1
        await batcher.close()
        return task.done()

    assert asyncio.run(scenario())
    assert model.sizes == [1]
