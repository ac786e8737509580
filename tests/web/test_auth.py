from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.runtime.ops import export_path
from pipeline.settings import load_settings
from pipeline.web.auth import allowed_hosts, check_bind, host_name, refusal, token_ok


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


# --- Host allow-list, content type and browser-origin rules (pure: pipeline.web.auth) ---

ALLOWED = allowed_hosts(load_settings(allowed_hosts="meter.example.com"))
JSON = {"Host": "127.0.0.1:6066", "Content-Type": "application/json"}


@pytest.mark.parametrize("host, name", [
    ("127.0.0.1:6066", "127.0.0.1"), ("LOCALHOST", "localhost"), ("[::1]:6066", "::1"),
    ("[::1]", "::1"), ("localhost.:80", "localhost"), ("", None), ("a:b", None),
    ("[::1]x", None), ("evil.example@127.0.0.1", None), (":6066", None),
])
def test_host_name(host: str, name: str | None) -> None:
    assert host_name(host) == name


def test_only_loopback_the_web_host_and_allowed_hosts_are_served() -> None:
    assert ALLOWED == {"127.0.0.1", "localhost", "::1", "meter.example.com"}
    assert "10.0.0.5" in allowed_hosts(load_settings(web_host="10.0.0.5", api_token="t"))
    assert "0.0.0.0" not in allowed_hosts(load_settings(web_host="0.0.0.0", api_token="t"))
    for host in ("127.0.0.1:6066", "localhost", "[::1]:1", "meter.example.com:443"):
        assert refusal("GET", "/api/budgets", {"Host": host}, ALLOWED) is None, host
    for host in ("evil.example:6066", "127.0.0.2", "", "meter.example.com.evil.example"):
        status, message = refusal("GET", "/api/query", {"Host": host}, ALLOWED) or (0, "")
        assert status == 403 and "TOKENMETER_ALLOWED_HOSTS" in message, host
    # probes (Kubernetes, Prometheus) reach a pod by its IP
    assert refusal("GET", "/health", {"Host": "10.1.2.3"}, ALLOWED) is None
    assert refusal("GET", "/metrics", {}, ALLOWED) is None


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "post"])
@pytest.mark.parametrize("content_type", [None, "text/plain", "text/plain;charset=UTF-8",
                                          "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x",
                                          "application/jsonx", "application/json-seq"])
def test_mutating_requests_need_the_json_content_type(method: str,
                                                      content_type: str | None) -> None:
    headers = {"Host": "127.0.0.1:6066"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    status, message = refusal(method, "/api/ops/export_focus", headers, ALLOWED) or (0, "")
    assert status == 415 and "application/json" in message
    ok = {**headers, "Content-Type": "application/json; charset=utf-8"}
    assert refusal(method, "/api/ops/export_focus", ok, ALLOWED) is None


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"}, {"Origin": "null"}, {"Origin": "http://127.0.0.1:8000"},
    {"Origin": "https://127.0.0.1:6066x"}, {"Origin": "file://"},
    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
])
def test_browser_requests_from_another_origin_are_refused(headers: dict[str, str]) -> None:
    for method in ("POST", "GET"):
        assert (refusal(method, "/api/query", {**JSON, **headers}, ALLOWED) or (0,))[0] == 403
    # a link from another site may still open the page (it holds no data)
    assert refusal("GET", "/", {"Host": "127.0.0.1:6066", **headers}, ALLOWED) is None


def test_the_dashboards_own_calls_pass() -> None:
    same = {"Origin": "http://127.0.0.1:6066", "Sec-Fetch-Site": "same-origin"}
    assert refusal("PUT", "/api/budgets/b", {**JSON, **same}, ALLOWED) is None
    assert refusal("GET", "/api/dashboard/overview",
                   {"Host": "127.0.0.1:6066", "Sec-Fetch-Site": "same-origin"}, ALLOWED) is None
    assert refusal("GET", "/", {"Host": "localhost:6066", "Sec-Fetch-Site": "none"},
                   ALLOWED) is None


def test_export_path_stays_under_exports(tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    assert export_path(exports, "f.csv") == (exports / "f.csv").resolve()
    assert export_path(exports, "m/f.parquet") == (exports / "m" / "f.parquet").resolve()
    assert export_path(exports, str(exports / "a.csv")) == (exports / "a.csv").resolve()
    exports.mkdir()
    (exports / "link").symlink_to(tmp_path)
    for bad in ("/etc/passwd.csv", "../f.csv", "a/../../f.csv", str(tmp_path / "f.csv"),
                "link/f.csv", str(exports), "f.txt", "f\x00.csv"):
        with pytest.raises(ConfigError):
            export_path(exports, bad)


@pytest.mark.parametrize(("headers", "token", "ok"), [
    ({"Host": "127.0.0.1:6066"}, None, True),
    ({"Host": "localhost"}, None, True),
    ({"Host": "rebind.example"}, None, False),
    ({}, None, False),
    ({"Host": "127.0.0.1:6066"}, "s3cret", False),
    ({"Host": "127.0.0.1:6066", "Authorization": "Bearer s3cret"}, "s3cret", True),
    ({"Host": "rebind.example", "Authorization": "Bearer s3cret"}, "s3cret", False),
])
def test_probe_details_only_for_an_allowed_host_and_the_token(headers, token, ok) -> None:
    from pipeline.settings import load_settings
    from pipeline.web.auth import may_see_details

    settings = load_settings(api_token=token) if token else load_settings()
    assert may_see_details(headers, settings) is ok
