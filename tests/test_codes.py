from protocol import codes


def test_landscape_codes_keep_their_values():
    assert (codes.FAILED, codes.SUCCEEDED) == (5, 6)
    assert (codes.TIME_LIMIT, codes.SCRIPT_FAILED, codes.ATTACHMENT_DOWNLOAD_FAILED) == (102, 103, 104)


def test_ridgeline_codes_start_at_200_and_are_unique():
    own = [c for c in codes.RESULT_NAMES if c >= 200]
    assert min(own) == 200
    assert len(set(codes.RESULT_NAMES.values())) == len(codes.RESULT_NAMES)
    assert {codes.RESULT_NAMES[c] for c in own} == {
        "interrupted", "canceled", "expired", "no-handler", "user-not-allowed",
        "unknown-user", "unknown-interpreter", "no-answer",
    }


def test_result_name():
    assert codes.result_name(None) is None
    assert codes.result_name(codes.NO_ANSWER) == "no-answer"
    assert codes.result_name(1) == "code-1"
    assert codes.RESULT_CODES["time-limit"] == 102
    assert all(type(c) is int for c in codes.RESULT_NAMES)
