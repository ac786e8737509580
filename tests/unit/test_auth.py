import pytest

from pipeline.errors import ConfigError
from pipeline.settings import load_settings
from pipeline.web.auth import check_bind, token_ok


@pytest.mark.parametrize(
    "header, ok",
    [("Bearer s3cret", True), ("Bearer s3cret ", True), ("Bearer wrong", False),
     ("bearer s3cret", False), ("s3cret", False), (None, False), ("", False),
     ("Bearer ", False), ("Basic czNjcmV0", False)],
)
def test_token_ok(header: str | None, ok: bool) -> None:
    assert token_ok(header, "s3cret") is ok


def test_binding_beyond_loopback_needs_a_token() -> None:
    check_bind(load_settings(web_host="127.0.0.1"))
    with pytest.raises(ConfigError, match="TOKENMETER_API_TOKEN"):
        check_bind(load_settings(web_host="0.0.0.0"))
    check_bind(load_settings(web_host="0.0.0.0", api_token="t"))
