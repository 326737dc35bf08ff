"""The checks of an LLM's questions, on questions a real small model (Qwen2.5-Coder-1.5B-
Instruct, through the service's generator) wrote for FAQ chunks, and on questions people
wrote for the same FAQs (which no check may turn down for being about the text, copied or
not a question)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deepmemory_service.llm.client import (
    ASK_ELSEWHERE,
    EXAMPLE_QUESTIONS,
    EXAMPLE_TEXT,
    PROMPT_EXAMPLE,
    TURNED_DOWN_HEADING,
    LLMQuestionGenerator,
    chat_messages,
    read_user_prompt,
    user_prompt,
)
from deepmemory_service.llm.question_checks import (
    ADVICE,
    Feedback,
    Reason,
    Rejection,
    about_the_text,
    check_question,
    copied,
    duplicate_key,
    is_question,
    ranks_within,
)
from deepmemory_service.models import Chunk
from deepmemory_service.vectors import normalise

# a chunk of curl's FAQ and what the 1.5B model asked of it, verbatim
CURL_CHUNK = (
    "Project cURL is entirely free and open. We do this voluntarily, mostly in our spare\n"
    " time. Companies may pay individual developers to work on curl. This is not\n"
    " controlled by nor supervised in any way by the curl project.\n\n"
    "We get help from companies. Haxx provides website, bandwidth, mailing lists etc,\n"
    " GitHub hosts the primary git repository and other services like the bug tracker\n"
    " at https://github.com/curl/curl. Also again, some companies may sponsor certain\n"
    " parts of the development in the form of for example sponsored features."
)
EMACS_CHUNK = (
    "If you want to use Emacs inside fbterm as root, you need to make sure that\n"
    "fbterm does not define any key bindings for its own use: start Emacs inside\n"
    "'fbterm' as root with a shortcut for the command in the shell configuration\n"
    "file of the root user."
)

ABOUT_THE_TEXT = [
    "What are some of the operating systems mentioned in the passage?",
    "What is the name of the command-line tool mentioned in the passage?",
    "What are the main points of the passage?",
    "What is the attitude of the author towards adding new protocols?",
    "What is the purpose of the passage?",
    "What does the text say about quoting letters in a URL?",
    "What are the two mechanisms mentioned for monitoring network connections?",
    "What is the role of the CURLOPT_WRITEDATA option in the given passage?",
    "What is the minimum PHP version required for the given functionality?",
    "What is the easiest way to do this?",
    "What does the second command do?",
    "What is the name of the author?",
    "What does the option do in the context?",
    "What does it say about the accused's right to counsel?",
]
# questions people wrote (curl, git, Emacs, Vim and Debian FAQs), which must pass
PEOPLE = [
    "What is cURL?",
    "How do I tell curl to resume a transfer?",
    "Who is the author of curl?",
    "How can I replace highlighted text with what I type?",
    "If I were to decide to change to another distribution, can I do that?",
    "I would like to use Vim with Microsoft Visual Studio. How do I do this?",
    "How do I make the text bigger in Emacs?",
    "Why does git diff show the whole file as changed?",
    "Where can I get Emacs for Windows?",
    "Is it possible to use curl with a SOCKS proxy?",
    "curl: (1) SSL is disabled, https: not supported?",
]


# questions the 1.5B model wrote about the subject, naming it, which must pass too
ABOUT_THE_SUBJECT = [
    "What does the highest documented error code mean in the context of curl?",
    "What is the significance of the First Amendment in the context of freedom of speech?",
]


@pytest.mark.parametrize("question", ABOUT_THE_TEXT)
def test_questions_about_the_text_itself_are_turned_down(question: str) -> None:
    assert about_the_text(question)
    assert check_question(question, CURL_CHUNK) is Reason.ABOUT_TEXT


@pytest.mark.parametrize("question", PEOPLE + ABOUT_THE_SUBJECT)
def test_questions_people_wrote_pass(question: str) -> None:
    assert check_question(question, CURL_CHUNK + EMACS_CHUNK) is None, question


def test_a_sentence_of_the_chunk_made_a_question_is_a_copy() -> None:
    # the model's own questions for these chunks: a sentence with "Who" in front, and a
    # long run of the chunk word for word
    copy = (
        "Who provides website, bandwidth, mailing lists, etc., GitHub hosts the primary git "
        "repository and other services?"
    )
    assert copied(copy, CURL_CHUNK)
    assert check_question(copy, CURL_CHUNK) is Reason.COPIED
    long_copy = (
        "What command can be used to start Emacs inside 'fbterm' as root while ensuring "
        "that 'fbterm' does not define any key bindings for its own use?"
    )
    assert check_question(long_copy, EMACS_CHUNK) is Reason.COPIED
    # a few words of the chunk, as any question about it has, are not a copy; nor is a
    # run of stop words ("is the name of the")
    assert not copied("Who hosts curl's git repository?", CURL_CHUNK)
    assert not copied("What is the name of the project?", "cURL is the name of the project.")
    assert check_question("Is cURL paid for by companies?", CURL_CHUNK) is None


def test_things_that_are_not_questions_are_turned_down() -> None:
    for text in ("libcurl", "curl?", "Haxx provides the website and bandwidth.", "x " * 70):
        assert not is_question(text), text
        assert check_question(text, CURL_CHUNK) is Reason.NOT_QUESTION
    # a question people would type without its question mark is still one
    assert is_question("how do I resume a download with curl")


def test_near_duplicates_share_a_key() -> None:
    # the 1.5B model asked these of different chunks of curl's FAQ
    same = [
        "What is the purpose of curl?",
        "What is curl?",
        "What is curl used for?",
        "What is the main purpose of curl?",
    ]
    assert len({duplicate_key(q) for q in same}) == 1
    assert duplicate_key("What is libcurl?") == duplicate_key("What is the purpose of libcurl?")
    # a question about something else, or about more, is not a duplicate
    assert duplicate_key("What is libcurl?") != duplicate_key("What is curl?")
    assert duplicate_key("What does the -F option do?") != duplicate_key(
        "What does the -d option do?"
    )
    assert duplicate_key("What is error 60?") != duplicate_key("What is error 61?")
    kept = {duplicate_key("What is curl?")}
    assert check_question("What is the purpose of curl?", CURL_CHUNK, kept) is Reason.DUPLICATE
    assert check_question("What is libcurl?", CURL_CHUNK, kept) is None


def test_round_trip_keeps_a_question_whose_chunk_is_among_the_nearest() -> None:
    chunks = normalise(np.eye(4, dtype=np.float32) + 0.1)
    questions = normalise(
        np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.9, 0.0], [0.0, 1.0, 0.9, 0.0]], np.float32)
    )
    # question 0 finds chunk 0 first; question 1 finds chunk 1 first; question 2 is about
    # chunk 2, which it finds second: kept with k=2, not with k=1
    assert ranks_within(questions, chunks, [0, 1, 2], 1) == [True, True, False]
    assert ranks_within(questions, chunks, [0, 1, 2], 2) == [True, True, True]
    assert ranks_within(questions[:0], chunks, [], 1) == []


def test_asking_again_tells_the_model_why_never_the_questions() -> None:
    chunk = Chunk(1, CURL_CHUNK)
    first = user_prompt(chunk, 3)
    assert first == f'Write exactly 3 search questions that this answers:\n"""\n{CURL_CHUNK}\n"""'
    assert TURNED_DOWN_HEADING not in first
    feedback = Feedback(
        (
            Rejection("What is the purpose of the passage?", Reason.ABOUT_TEXT),
            Rejection("What is curl?", Reason.DUPLICATE),
            Rejection("What does the passage say about git?", Reason.ABOUT_TEXT),
        )
    )
    again = user_prompt(chunk, 1, feedback)
    # the chunk as the first time, then each reason's advice once, in the checks' order; the
    # questions themselves are never shown (a small model shown them wrote them again)
    assert again == "\n".join(
        [
            first.replace("3 search questions", "1 search question"),
            "",
            TURNED_DOWN_HEADING,
            f"- {ADVICE[Reason.ABOUT_TEXT]}",
            f"- {ADVICE[Reason.DUPLICATE]}",
            ASK_ELSEWHERE,
        ]
    )
    assert "curl?" not in again.split('"""')[-1]


def test_the_prompts_reader_finds_what_the_writer_asked() -> None:
    # a chunk may hold the prompt's own fence and a line like the heading of asking again
    text = f'{CURL_CHUNK}\n"""\n{TURNED_DOWN_HEADING}'
    chunk = Chunk(1, text)
    first = read_user_prompt(user_prompt(chunk, 1))
    assert first is not None
    assert (first.count, first.text, first.asking_again) == (1, text, False)
    feedback = Feedback((Rejection('Why """ here?', Reason.COPIED),))
    again = read_user_prompt(user_prompt(chunk, 3, feedback))
    assert again is not None
    assert (again.count, again.text, again.asking_again) == (3, text, True)
    assert ADVICE[Reason.COPIED] in again.feedback
    assert read_user_prompt("Write 3 questions about this passage") is None


def test_a_call_shows_the_worked_example_before_the_chunk() -> None:
    chunk = Chunk(1, CURL_CHUNK)
    messages = chat_messages(chunk, 4)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    # the example exchange as a call for as many questions would be, then the chunk's; the
    # prompt never calls the chunk a passage or a text (a small model mirrors those words)
    assert messages[1]["content"] == user_prompt(Chunk(0, EXAMPLE_TEXT), 4)
    assert json.loads(messages[2]["content"]) == {"questions": list(EXAMPLE_QUESTIONS[:4])}
    assert messages[3]["content"] == user_prompt(chunk, 4)
    assert "passage" not in messages[3]["content"].lower()
    # a call asking again for one question shows one; one asking for more than the example
    # has shows them all
    assert json.loads(chat_messages(chunk, 1)[2]["content"])["questions"] == [PROMPT_EXAMPLE]
    assert json.loads(chat_messages(chunk, 9)[2]["content"]) == {
        "questions": list(EXAMPLE_QUESTIONS)
    }
    # the example's questions pass the checks (the model is shown good ones), and count as
    # asked: no chunk keeps a copy of them
    keys: set[str] = set()
    for question in EXAMPLE_QUESTIONS:
        assert check_question(question, EXAMPLE_TEXT, keys) is None, question
        keys.add(duplicate_key(question))
    assert LLMQuestionGenerator.examples == EXAMPLE_QUESTIONS
