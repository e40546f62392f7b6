"""hacluster/http/passwords.py: scrypt hashes (at a lower cost than the default for
speed: same code and format)."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hacluster.http import passwords
from raft.user_table import hash_error

FAST = 10
password = st.text(min_size=passwords.MIN_PASSWORD, max_size=40)


@settings(max_examples=25, deadline=None)
@given(p=password, q=password)
def test_a_hash_verifies_its_password_and_no_other(p, q):
    stored = passwords.hash_password(p, log2_n=FAST)
    assert passwords.verify_password(stored, p)
    assert passwords.verify_password(stored, q) == (p == q)
    assert p not in stored.split("$")
    assert hash_error(stored) is None       # the cluster state accepts what is made here


def test_two_hashes_of_one_password_differ_by_their_salt():
    a, b = (passwords.hash_password("same-password", log2_n=FAST) for _ in range(2))
    assert a != b and passwords.fingerprint(a) != passwords.fingerprint(b)


def test_the_default_parameters_are_written_into_the_hash():
    stored = passwords.hash_password("a-good-password")
    assert stored.startswith(f"scrypt${passwords.LOG2_N}${passwords.R}${passwords.P}$")
    assert passwords.verify_password(stored, "a-good-password")


@pytest.mark.parametrize("stored", ["", "plain", "scrypt$15$8$1$salt$key", "bcrypt$x",
                                    "scrypt$30$8$1$" + "A" * 22 + "$" + "B" * 43])
def test_a_malformed_hash_verifies_nothing(stored):
    assert passwords.verify_password(stored, "anything-at-all") is False


def test_unusable_passwords_are_refused_with_a_reason():
    with pytest.raises(passwords.PasswordError, match="at least 8"):
        passwords.hash_password("short")
    with pytest.raises(passwords.PasswordError, match="at most"):
        passwords.hash_password("x" * 2000)
    assert passwords.verify_password(passwords.hash_password("ok-password", log2_n=FAST),
                                     "x" * 2000) is False
