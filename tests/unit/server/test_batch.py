"""An upload decoded once (server_stub/batch.py): the same events and the same refusals as
validating the decoded body as a whole (what FastAPI did), with each event's text kept as sent
when it already is what the model writes. Every test runs twice: with the validator derived from
the model's schema (batch.Derived, the way a batch is decoded) and with the model alone."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from endpoint_contract.events import AgentEvent, Event, EventBatch, Violation, batch_body
from server_stub import batch
from server_stub.batch import BatchInvalid, BatchUnreadable, Derived, parse_batch
from tests.support.server_events import agent_event, violation


@pytest.fixture(autouse=True, params=["derived", "model"])
def validator(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "model":
        monkeypatch.setattr(batch, "_DERIVED", None)
    return str(request.param)


def agent_text(**over: Any) -> str:
    """A violation's text as the agent stores and uploads it (Violation.to_json_text)."""
    data = {
        "event_id": str(uuid.uuid4()),
        "detected_at": datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        "first_seen": datetime(2030, 1, 2, 3, 4, 0, tzinfo=UTC),
        "rule_id": "p2p",
        "category": "p2p",
        "severity": "high",
        "action": "killed",
        "pid": 4242,
        "process_name": "qbittorrent",
        "exe": "/usr/bin/qbittorrent",
        "evidence": [{"attribute": "name", "pattern": "qbit*", "value": "qbittorrent"}],
        "reason": "matched",
        "policy_version": 3,
        "hostname": "ws-1",
        "os": "Debian",
        **over,
    }
    return Violation.model_validate(data).to_json_text()


def minimal(**over: Any) -> dict[str, Any]:
    """A violation as a hand-written client sends it: optional keys left out, times with +00:00."""
    return violation(**{"detected_at": "2030-01-02T03:04:05+00:00", **over})


def whole(body: bytes) -> list[Violation | AgentEvent]:
    """The reference: the body decoded whole and validated as Python."""
    return EventBatch.model_validate(json.loads(body)).events


def test_an_agents_texts_are_kept_exactly_as_sent() -> None:
    texts = [
        agent_text(),
        agent_text(connection={"laddr": "127.0.0.1:6881", "proto": "tcp", "domain": "t.example"}),
        AgentEvent.model_validate(
            {"event_id": str(uuid.uuid4()), "detected_at": "2030-01-02T03:04:05Z", "type": "circuit_open"}
        ).to_json_text(),
    ]
    got = parse_batch(batch_body(texts))
    assert [r.text for r in got] == texts
    assert [r.event for r in got] == whole(batch_body(texts))


@pytest.mark.parametrize(
    "layout",
    [
        '{{"events":[{}]}}',
        ' \n{{ "events" :\t[ {} ] }}\r\n',
        '{{"events": [\n  {}\n]\n}}',
    ],
)
def test_any_json_whitespace_around_the_events(layout: str) -> None:
    texts = [agent_text(), agent_text()]
    body = layout.format(" ,\n ".join(texts)).encode()
    assert [r.text for r in parse_batch(body)] == texts


def test_a_repeated_events_key_means_what_it_means_to_whole_decoding() -> None:
    """The last one counts, as for json.loads; events with several nested records split whole."""
    first, second = (
        agent_text(),
        agent_text(
            evidence=[{"attribute": "name", "pattern": "a*", "value": "ab"}] * 3,
            connection={"laddr": "127.0.0.1:1", "proto": "tcp"},
        ),
    )
    body = ('{"events":[' + first + '],"events":[' + second + "," + first + "]}").encode()
    got = parse_batch(body)
    assert [r.text for r in got] == [second, first]
    assert [r.event for r in got] == whole(body)


def test_what_the_model_writes_differently_is_stored_as_the_model_writes_it() -> None:
    """Keys left out, nulls to_json omits, coerced types: the stored text is to_json's, so readers
    always get every contract key in the contract's types."""
    events = [
        minimal(),  # no severity, evidence, exe...: to_json adds them
        minimal(first_seen=None),  # a null that to_json leaves out
        minimal(pid="42"),  # a number sent as a string: coerced
        minimal(connection={"laddr": "a", "domain": None}),
        {"kind": "agent", "event_id": str(uuid.uuid4()), "detected_at": "2030-01-02T03:04:05Z", "type": "x"},
    ]
    body = json.dumps({"events": events}).encode()
    got = parse_batch(body)
    reference = whole(body)
    assert [r.event for r in got] == reference
    assert [r.text for r in got] == [ev.to_json_text() for ev in reference]
    assert json.loads(got[0].text)["severity"] == "medium" and json.loads(got[2].text)["pid"] == 42


def test_text_that_has_every_key_is_kept_with_its_own_time_format_and_extras() -> None:
    text = agent_text()
    data = json.loads(text)
    data["detected_at"] = "2030-01-02T04:04:05.678901+01:00"
    data["x-extra"] = {"nested": [1, 2.5, None, "é"]}
    mine = json.dumps(data, ensure_ascii=False)
    (got,) = parse_batch(batch_body([mine]))
    assert got.text == mine and got.event == whole(batch_body([mine]))[0]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{not json",
        b"[]",
        b'{"events": {}}',
        b'{"events": [], "extra": 1}',
        b'{"extra": 1, "events": []}',
        b'{"events": [1]}',
        b'{"events": [{"kind": "gossip"}]}',
        b'{"events": [{}],}',
        b'{"events": [{},]}',
        b'{"events": [] } x',
        json.dumps({"events": [minimal(), minimal(rule_id="")]}).encode(),
        json.dumps({"events": [minimal(detected_at="2030-01-01T00:00:00")]}).encode(),
        json.dumps({"events": [minimal(pid=-1), minimal(action="exploded")]}).encode(),
        json.dumps({"events": [minimal(extra="a\x00b")]}).encode(),
        json.dumps({"events": [minimal(reason="x\ud800")]}).encode(),
        json.dumps({"events": [minimal(**{"k\ud800": 1})]}).encode(),
        json.dumps({"events": [minimal(big=2**70)]}).encode(),
        json.dumps({"events": [minimal(create_time=float("inf"))]}).encode(),
        json.dumps({"events": [minimal(extra=float("nan"))]}).encode(),
        b'{"events": [' + json.dumps(minimal())[:-1].encode() + b', "create_time": 1e999}]}',
        b'{"events": ['
        + json.dumps(minimal())[:-1].encode()
        + b', "x": '
        + b'{"a":' * 300
        + b"{}"
        + b"}" * 300
        + b"}]}",
    ],
)
def test_a_bad_body_is_refused_naming_what_whole_validation_names(body: bytes) -> None:
    with pytest.raises(BatchInvalid) as refused:
        parse_batch(body)
    try:
        decoded = json.loads(body)
    except ValueError:
        assert refused.value.errors[0]["loc"][0] == "body"
        return
    with pytest.raises(ValidationError):
        EventBatch.model_validate(decoded)
    assert all(e["loc"][0] == "body" for e in refused.value.errors)
    assert refused.value.errors[0]["msg"]


def test_nesting_deeper_than_the_parser_goes_is_unreadable() -> None:
    deep = b'{"a":' * 5000 + b"{}" + b"}" * 5000
    body = b'{"events": [' + json.dumps(minimal())[:-1].encode() + b', "x": ' + deep + b"}]}"
    with pytest.raises(BatchUnreadable):
        parse_batch(body)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
extras = st.dictionaries(
    st.text(min_size=1, max_size=6),
    st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6),
    max_size=3,
)
overrides = st.fixed_dictionaries(
    {},
    optional={
        "pid": st.one_of(st.integers(min_value=-2, max_value=2**33), st.text(max_size=4)),
        "severity": st.sampled_from(["low", "high", "urgent"]),
        "first_seen": st.one_of(st.none(), st.just("2030-01-02T03:04:05Z"), st.integers(0, 2**31)),
        "create_time": st.one_of(st.none(), st.floats(allow_nan=False), st.integers(-1, 5)),
        "reason": st.text(max_size=8),
        "hostname": st.one_of(st.none(), st.text(max_size=8)),
    },
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(st.tuples(overrides, extras), min_size=1, max_size=4), ascii_only=st.booleans())
def test_one_pass_agrees_with_whole_validation(
    events: list[tuple[dict[str, Any], dict[str, Any]]], ascii_only: bool
) -> None:
    body = json.dumps(
        {"events": [{**extra, **minimal(**over)} for over, extra in events]}, ensure_ascii=ascii_only
    ).encode()
    try:
        reference = whole(body)
    except ValidationError:
        with pytest.raises(BatchInvalid):
            parse_batch(body)
        return
    got = parse_batch(body)
    assert [r.event for r in got] == reference
    for r in got:  # the text stored reads back as the model's JSON: every key, the same values
        stored, written = json.loads(r.text), json.loads(r.event.to_json_text())
        assert stored.keys() == written.keys()
        for key, value in written.items():
            if key in TIMES and value is not None:  # the same instant, maybe written another way
                assert datetime.fromisoformat(stored[key]) == datetime.fromisoformat(value)
            else:
                assert stored[key] == value, key


TIMES = ("detected_at", "first_seen", "last_seen")


def test_the_validator_is_derived_from_the_models_schema() -> None:
    """A Python validator added to the events' models that Derived does not know makes it None
    (and batches then validate at the model's speed): this fails first."""
    assert Derived.of(TypeAdapter(list[Event])) is not None


@pytest.mark.parametrize(
    "event",
    [
        minimal(detected_at="1969-12-31T23:59:59Z"),
        minimal(first_seen="2200-01-01T00:00:00Z"),
        minimal(last_seen="1969-12-31T23:30:00-01:00"),
        minimal(connection={"laddr": "127.0.0.1:1", "netns": {"id": 2**70}}),
        minimal(connection={"laddr": "127.0.0.1:1", "k" * 300: 1}),
        minimal(note=[[[[1.5]]]], big=-(2**64)),
        {**agent_event(), "detected_at": "2200-01-01T00:00:00+05:00"},
        {**agent_event(), "detail": {"n": 2**64}},
    ],
)
def test_what_the_derived_validator_leaves_to_its_checks_is_refused_as_the_model_refuses(
    event: dict[str, Any],
) -> None:
    """The checks taken out of the derived schema (the times' range, the untyped parts' bounds)
    still refuse, with the model's own error; and the derived validator hands such a batch back."""
    body = json.dumps({"events": [minimal(), event]}).encode()
    with pytest.raises(ValidationError):
        EventBatch.model_validate(json.loads(body))
    with pytest.raises(BatchInvalid) as refused:
        parse_batch(body)
    assert refused.value.errors[0]["loc"][:3] == ("body", "events", 1)
    derived = Derived.of(TypeAdapter(list[Event]))
    assert derived is not None
    assert derived.validate(batch._SPLIT.decode(body).events) is None


def test_times_at_the_edges_of_the_range_are_taken_as_the_model_takes_them() -> None:
    """Wall time judged (endpoint_contract/bounds.py check_time): 1970 with a negative offset is
    1969 in UTC, yet valid; 2199-12-31T23:59 with a positive offset is valid too."""
    events = [
        minimal(detected_at="1970-01-01T00:00:00+01:00", first_seen="2199-12-31T23:59:59.999999-05:00"),
        {**agent_event(), "detected_at": "2199-12-31T23:59:59Z"},
    ]
    body = json.dumps({"events": events}).encode()
    assert [r.event for r in parse_batch(body)] == whole(body)


def test_a_null_that_to_json_leaves_out_is_not_stored_even_when_every_key_is_there() -> None:
    """An agent-complete text (every contract key) with a key written `null` that to_json omits is
    stored as to_json writes it; the word null inside a value changes nothing."""
    with_null = [
        agent_text()[:-1] + ',"last_seen":null}',
        agent_text(connection={"laddr": "127.0.0.1:1", "proto": "tcp"})[:-1].replace(
            '"proto":"tcp"', '"proto":"tcp","domain":null'
        )
        + "}",
        json.dumps({**agent_event(), "count": None}),
    ]
    kept = agent_text(reason="null", process_name="null")
    body = batch_body([*with_null, kept])
    got = parse_batch(body)
    reference = whole(body)
    assert [r.event for r in got] == reference
    assert [r.text for r in got[:3]] == [ev.to_json_text() for ev in reference[:3]]
    assert all(r.text != sent for r, sent in zip(got, with_null, strict=False))
    assert got[3].text == kept
