"""hacluster/http/sessions.py and login_limit.py: signed cookies and the login limit
(pure: the time is passed in)."""
from hypothesis import given
from hypothesis import strategies as st

from hacluster.http import sessions
from hacluster.http.login_limit import LoginLimit

KEY = sessions.session_key("secret-one")


def test_a_cookie_round_trips_under_the_same_key_only():
    s = sessions.new_session("ann", "f" * 16, now=1000.0, lifetime_s=60)
    cookie = sessions.encode(KEY, s)
    assert sessions.decode(KEY, cookie, now=1001.0) == s
    assert sessions.decode(sessions.session_key("secret-one"), cookie, now=1001.0) == s
    assert sessions.decode(sessions.session_key("secret-two"), cookie, now=1001.0) is None
    assert sessions.decode(KEY, cookie, now=1060.0) is None         # expired
    assert sessions.decode(KEY, cookie, now=800.0) is None          # issued in the future


@given(st.text(max_size=200))
def test_garbage_is_no_session(cookie):
    assert sessions.decode(KEY, cookie, now=0.0) is None


def test_a_tampered_payload_is_refused():
    s = sessions.new_session("mona", "f" * 16, now=0.0)
    payload, mac = sessions.encode(KEY, s).split(".")
    forged = sessions.encode(KEY, sessions.Session("ann", s.password, s.issued, s.expires, s.csrf))
    assert sessions.decode(KEY, forged.split(".")[0] + "." + mac, now=1.0) is None
    assert sessions.csrf_ok(s, s.csrf) and not sessions.csrf_ok(s, None)
    assert not sessions.csrf_ok(s, s.csrf[:-1])


def test_failed_logins_are_limited_per_user_and_per_address_and_forgotten_after_the_window():
    limit = LoginLimit(window_s=100, per_address=4, per_user=2)
    for t in (0, 1):
        assert limit.retry_after("a1", "ann", t) == 0
        limit.failed("a1", "ann", t)
    assert limit.retry_after("a1", "ann", 2) == 98          # ann: 2 failures
    assert limit.retry_after("a2", "ann", 2) == 98          # from anywhere
    assert limit.retry_after("a1", "bob", 2) == 0
    limit.failed("a1", "bob", 3)
    limit.failed("a1", "carl", 4)
    assert limit.retry_after("a1", "dan", 5) == 95          # a1: 4 failures
    assert limit.retry_after("a3", "dan", 5) == 0
    assert limit.retry_after("a2", "ann", 101) == 0         # the window passed
    limit.succeeded("bob")
    assert limit.retry_after("a9", "bob", 6) == 0


def test_the_limit_tracks_a_bounded_number_of_keys():
    limit = LoginLimit(max_keys=10)
    for i in range(100):
        limit.failed(f"10.0.0.{i}", f"user{i}", float(i))
    assert len(limit._failures) <= 10
