"""An interim 1xx answer (``103 Early Hints`` from a proxy) before the real one, over real loopback sockets.

http.client takes the 103 for the answer (an empty body) and leaves the real answer unread on the connection;
a client that then pools that connection hands the next call the previous call's answer.  The library refuses
the 103 with a typed error and closes that connection, so every later call gets its own answer.  It is a race
(the real answer may or may not have arrived when the 103 is read), so each path is tried many times."""

import itertools

import pytest

import lm_providers as lmp
from loopback import Reply, json_reply
from servers import LOCAL

MESSAGES = [{"role": "user", "content": "Say your number."}]
kinds = pytest.mark.parametrize("kind", LOCAL, ids=str)


def numbered_answers(server, kind, stream):
    """Odd requests: a 103 first, then answer N; even requests: answer N plainly."""
    counter = itertools.count(1)

    def answer(request):
        number = next(counter)
        text = "answer %d" % number
        interim = [103] if number % 2 else []
        if stream:
            return kind.stream_reply([text], interim=interim)
        return json_reply(kind.blocking_body(text), interim=interim)
    server.route("POST", kind.chat_path, answer)


@kinds
@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streamed"])
def test_an_interim_answer_is_refused_and_never_reaches_the_next_call(server, kind, stream):
    numbered_answers(server, kind, stream)
    provider = kind.provider(server)
    for number in range(1, 41, 2):
        with pytest.raises(lmp.ProviderResponseError) as caught:
            if stream:
                list(provider.stream_text(MESSAGES, kind.model))
            else:
                provider.chat(MESSAGES, kind.model)
        assert caught.value.status == 103 and caught.value.reason == "bad_response"
        assert "interim" in caught.value.message and "Early Hints" in caught.value.hint
        # the next call gets its own answer, not the one left behind the 103
        text = ("".join(provider.stream_text(MESSAGES, kind.model)) if stream
                else provider.chat(MESSAGES, kind.model).text)
        assert text == "answer %d" % (number + 1)


def test_an_interim_answer_on_a_get_is_refused_too(server):
    kind = LOCAL[0]
    server.route("GET", kind.models_path, json_reply(kind.models_body(["m"]), interim=[103]))
    with pytest.raises(lmp.ProviderResponseError) as caught:
        kind.provider(server).list_models()
    assert caught.value.status == 103
