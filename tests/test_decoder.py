"""StreamDecoder and the think-tag filter, fed every possible split of real-shaped bodies."""

import json

from hypothesis import given, settings, strategies as st

import lm_providers as lmp
from loopback import ndjson_events, sse_events

PIECES = ["Hé", "llo", " wörld ✓", " 日本", "\n\nnew line", ' "quoted" ']
SSE_BODY = b"".join(sse_events(PIECES))
NDJSON_BODY = b"".join(ndjson_events(PIECES))


def decode(framing, chunks):
    decoder = lmp.StreamDecoder(framing)
    out = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out + decoder.flush()


def contents(framing, events):
    texts = []
    for data in events:
        assert type(data) is bytes
        if data == b"[DONE]":
            texts.append("[DONE]")
            continue
        event = json.loads(data)
        if framing == "sse":
            if event["choices"] and event["choices"][0]["delta"].get("content"):
                texts.append(event["choices"][0]["delta"]["content"])
        elif event["message"]["content"]:
            texts.append(event["message"]["content"])
    return texts


def test_whole_bodies_decode_to_the_pieces():
    assert contents("sse", decode("sse", [SSE_BODY])) == PIECES + ["[DONE]"]
    assert contents("ndjson", decode("ndjson", [NDJSON_BODY])) == PIECES


def test_every_two_way_split_gives_the_same_events():
    for framing, body in (("sse", SSE_BODY), ("ndjson", NDJSON_BODY)):
        whole = decode(framing, [body])
        for cut in range(len(body) + 1):
            assert decode(framing, [body[:cut], body[cut:]]) == whole, (framing, cut)


def test_byte_at_a_time_splits_utf8_characters_and_still_decodes():
    for framing, body in (("sse", SSE_BODY), ("ndjson", NDJSON_BODY)):
        assert decode(framing, [body[i:i + 1] for i in range(len(body))]) == decode(framing, [body])


@settings(max_examples=300, deadline=None)
@given(data=st.data(), framing=st.sampled_from(["sse", "ndjson"]), crlf=st.booleans())
def test_any_split_of_any_body_gives_the_same_events(data, framing, crlf):
    pieces = data.draw(st.lists(st.text(min_size=1, max_size=12), max_size=8))
    eol = b"\r\n" if crlf else b"\n"
    parts = sse_events(pieces, eol=eol) if framing == "sse" else ndjson_events(pieces, eol=eol)
    body = b"".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=12)))
    chunks = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)])]
    expected = [p for p in pieces if p] + (["[DONE]"] if framing == "sse" else [])
    assert contents(framing, decode(framing, chunks)) == expected


def test_sse_comments_event_names_and_multiline_data():
    body = (b": keep-alive comment\n\nevent: message\ndata: {\"a\":\ndata: 1}\n\n"
            b"event: error\ndata: {\"error\": \"bad\"}\n\nerror: {\"message\": \"llama\"}\n\ndata:[DONE]\n\n")
    events = decode("sse", [body])
    assert events == [b'{"a":\n1}', b'{"error": "bad"}', b'{"message": "llama"}', b"[DONE]"]
    assert [type(e) for e in events] == [bytes, lmp.StreamError, lmp.StreamError, bytes]


def test_unterminated_last_line_is_flushed():
    assert decode("ndjson", [b'{"a": 1}\n{"b": 2}']) == [b'{"a": 1}', b'{"b": 2}']
    assert decode("sse", [b"data: [DONE]"]) == [b"[DONE]"]


def test_blank_and_whitespace_ndjson_lines_are_skipped():
    assert decode("ndjson", [b'\n  \n{"a": 1}\r\n\n']) == [b'{"a": 1}']


def test_lone_cr_line_ends_and_a_crlf_split_between_reads():
    body = b"data: 1\r\rdata: 2\r\n\r\n"
    for cut in range(len(body) + 1):
        assert decode("sse", [body[:cut], body[cut:]]) == [b"1", b"2"], cut
    # a \r\n split across reads is one line end, so the two data lines stay one event
    assert decode("sse", [b"data: a\r", b"\ndata: b\r\n\r\n"]) == [b"a\nb"]


THINK_TEXT = "  <think>\nplan the answer</think>\n\nThe answer is 4. <think> stays </think> in text."


def run_filter(chunks):
    flt = lmp._ThinkFilter()
    content, reasoning = [], []
    for chunk in chunks:
        pieces, r = flt.feed(chunk)
        content.extend(pieces)
        reasoning.append(r)
    pieces, r = flt.finish()
    return "".join(content + pieces), "".join(reasoning + [r])


def test_think_block_is_split_off_on_every_two_way_split():
    expected = ("The answer is 4. <think> stays </think> in text.", "\nplan the answer")
    for cut in range(len(THINK_TEXT) + 1):
        assert run_filter([THINK_TEXT[:cut], THINK_TEXT[cut:]]) == expected, cut
    assert run_filter(list(THINK_TEXT)) == expected
    assert lmp.split_reasoning(THINK_TEXT) == expected


def test_text_without_think_is_untouched_even_if_it_starts_like_a_tag():
    for text in ["<b>bold</b>", "<thinking is fun", "  plain", "<", "<th", ""]:
        for cut in range(len(text) + 1):
            assert run_filter([text[:cut], text[cut:]]) == (text, ""), (text, cut)


def test_unclosed_think_block_is_all_reasoning():
    assert run_filter(["<think>still thinking when the tokens ran out"]) == (
        "", "still thinking when the tokens ran out")


def test_pieces_held_at_the_start_are_passed_on_unmerged():
    for pieces in (["\r", "0"], [" ", "\n", "Hi"], ["<", "b>bold"], ["<th", "e end"]):
        flt = lmp._ThinkFilter()
        out = []
        for piece in pieces:
            out.extend(flt.feed(piece)[0])
        out.extend(flt.finish()[0])
        assert out == pieces


# --- linear and bounded --------------------------------------------------------------------------

def test_a_long_line_costs_time_in_proportion_to_its_length():
    # 16 MiB in 4 KiB reads: re-joining the unfinished line on every read (the old decoder) copies about
    # 32 GiB and takes minutes; keeping its pieces until the line ends takes milliseconds.
    import time
    decoder = lmp.StreamDecoder("ndjson", max_event_bytes=32 << 20)
    piece = b"x" * 4096
    started = time.perf_counter()
    for _ in range(4096):
        assert decoder.feed(piece) == []
    assert decoder.feed(b"\n") == [piece * 4096]
    assert time.perf_counter() - started < 2


def test_a_line_or_event_over_the_limit_raises_naming_the_limit():
    for framing, start in (("ndjson", b"{"), ("sse", b"data: ")):
        decoder = lmp.StreamDecoder(framing, max_event_bytes=10000)
        decoder.feed(start)
        fed = 0
        try:
            while fed < 10 ** 8:
                decoder.feed(b"y" * 1000)
                fed += 1000
        except lmp.ProviderResponseError as exc:
            assert "max_event_bytes=10000" in str(exc)
        assert fed <= 10000, "read %d bytes past a limit of 10000" % fed
    decoder = lmp.StreamDecoder("sse", max_event_bytes=10000)
    try:
        decoder.feed(b"data: 12345678\n" * 2000)
    except lmp.ProviderResponseError as exc:
        assert "max_event_bytes=10000" in str(exc)
    else:
        raise AssertionError("an event of 2000 data lines passed a limit of 10000 bytes")
    # exactly at the limit is fine
    assert lmp.StreamDecoder("ndjson", max_event_bytes=10).feed(b"1234567890\n") == [b"1234567890"]


# --- Server-sent events as WHATWG defines them ---------------------------------------------------

def test_a_leading_byte_order_mark_is_ignored_wherever_the_reads_split_it():
    for framing, body in (("sse", b"\xef\xbb\xbfdata: 1\n\ndata: 2\n\n"), ("ndjson", b"\xef\xbb\xbf1\n2\n")):
        for cut in range(len(body) + 1):
            for cut2 in range(cut, min(cut + 4, len(body)) + 1):
                assert decode(framing, [body[:cut], body[cut:cut2], body[cut2:]]) == [b"1", b"2"], (cut, cut2)
    # only a leading one: later it is data
    assert decode("ndjson", [b"1\n\xef\xbb\xbf2\n"]) == [b"1", b"\xef\xbb\xbf2"]


def test_an_event_with_empty_data_is_skipped():
    body = b"data:\n\ndata: \n\ndata\n\n: comment\n\nevent: ping\n\nid: 5\nretry: 10\n\ndata: [DONE]\n\n"
    for cut in range(len(body) + 1):
        assert decode("sse", [body[:cut], body[cut:]]) == [b"[DONE]"], cut
    assert decode("sse", [b"data:\ndata: x\n\n"]) == [b"\nx"]  # an empty first line is still a line


def test_an_unfinished_last_event_is_decoded_at_the_end_of_the_body():
    # No closing blank line: still dispatched when the body ends (whole JSON counts; a cut-off event is then
    # "not JSON" to the provider), for every line ending.
    for eol in (b"\n", b"\r\n", b"\r"):
        assert decode("sse", [b"data: {\"a\": 1}" + eol + b"data: [DONE]" + eol]) == [b'{"a": 1}\n[DONE]']
        assert decode("sse", [b"data: {\"a\": 1}" + eol + eol + b"data: [DONE]"]) == [b'{"a": 1}', b"[DONE]"]


def test_event_json_parses_as_json_loads_does():
    # _parse_json is json.loads for one event (public raw_decode first, json.loads for the rest): same values,
    # same errors, white space on either side accepted.
    for text in ['{"a": [1, 2.5, "é"]}', ' \t{"a": 1}', '{"a": 1}\r\n ', '"just a string"', "17"]:
        assert lmp._parse_json(text.encode("utf-8")) == json.loads(text)
    for bad in ['{"a": 1} x', '{"a": ', "", "nan-ish", '{"a": 1}{"b": 2}']:
        try:
            json.loads(bad)
        except ValueError as expected:
            try:
                lmp._parse_json(bad.encode("utf-8"))
            except ValueError as got:
                assert str(got) == str(expected)
            else:
                raise AssertionError("%r parsed" % bad)
    deep = ("[" * 100000).encode()
    try:
        lmp._parse_json(deep)
    except RecursionError:
        pass
    else:
        raise AssertionError("a too deeply nested event parsed")


def test_server_text_that_is_not_json_reads_as_none():
    assert lmp._loads_or_none('{"error": "x"}') == {"error": "x"}
    assert lmp._loads_or_none("<html>502</html>") is None
    assert lmp._loads_or_none("[" * 100000) is None  # nested too deeply: no RecursionError escapes
    assert lmp._server_message("[" * 100000).startswith("[[[")


def test_a_whole_ndjson_line_over_the_limit_raises_too():
    # A line that arrives whole in one chunk, or whose end completes a held piece, is held to the limit too.
    for pieces in ([b"12345678901\n"], [b"123456", b"78901\n"]):
        decoder = lmp.StreamDecoder("ndjson", max_event_bytes=10)
        try:
            for piece in pieces:
                decoder.feed(piece)
        except lmp.ProviderResponseError as exc:
            assert exc.reason == "too_large" and "max_event_bytes=10" in str(exc)
        else:
            raise AssertionError("a line of 11 bytes passed a limit of 10 (%r)" % pieces)
