"""The sign-in gate every page calls first: ``require_sign_in()``.

* No ``[auth]`` section in ``.streamlit/secrets.toml``: the app is in single-user mode. That is only safe
  because the shipped config binds the server to 127.0.0.1 (reachable from this machine alone). An operator
  who exposes it sets ``FUSIONLENS_REQUIRE_SIGN_IN=1``: then a missing ``[auth]`` section shows one sentence
  and nothing else (fail closed).
* With ``[auth]``: Streamlit's built-in OpenID Connect sign-in (``st.login`` / ``st.user``, needs the
  Authlib package). A signed-out visitor sees the sign-in button and nothing of the app; an optional
  ``[fusionlens]`` section restricts who may use it (``allowed_domains`` / ``allowed_emails``).

The gate runs before the page's sidebar, so a signed-out visitor sees no model list, case or result.
"""
from __future__ import annotations

import os
from typing import Any

import streamlit as st

REQUIRE_ENV = "FUSIONLENS_REQUIRE_SIGN_IN"


def _secrets_section(name: str) -> Any:
    from streamlit.errors import StreamlitSecretNotFoundError

    try:
        return st.secrets.get(name)
    except (FileNotFoundError, StreamlitSecretNotFoundError):
        return None


def auth_configured() -> bool:
    return bool(_secrets_section("auth"))


def _required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _allowed(email: str | None) -> bool:
    rules = _secrets_section("fusionlens") or {}
    domains = [str(d).lower().lstrip("@") for d in rules.get("allowed_domains", [])]
    emails = [str(e).lower() for e in rules.get("allowed_emails", [])]
    if not domains and not emails:
        return True                       # the identity provider alone decides who may sign in
    email = (email or "").lower()
    return email in emails or ("@" in email and email.rsplit("@", 1)[1] in domains)


def _stop_page(title: str = "FusionLens") -> None:
    st.set_page_config(page_title=title, page_icon=":material/lock:", layout="centered")
    st.title("FusionLens")


def require_sign_in() -> None:
    """Render nothing of the page unless the visitor may see it; call first on every page."""
    if not auth_configured():
        if _required():
            _stop_page()
            st.error("Sign-in is required on this server but not configured: the operator must add an [auth] "
                     "section to .streamlit/secrets.toml (see the README, Deployment).")
            st.stop()
        return
    user = st.user
    if not user.is_logged_in:
        _stop_page()
        st.info("Sign in with your organisation's account to use FusionLens.", icon=":material/lock:")
        st.button("Sign in", key="auth_sign_in", on_click=st.login, type="primary", icon=":material/login:")
        st.stop()
    email = user.get("email")
    if not _allowed(email):
        _stop_page()
        st.error(f"The account {email or '(no e-mail)'} is not allowed to use FusionLens here; ask the operator.")
        st.button("Sign out", key="auth_sign_out_refused", on_click=st.logout)
        st.stop()
    st.sidebar.caption(f":material/person: Signed in as {user.get('name') or email or 'unknown user'}"
                       + (f" ({email})" if email and user.get("name") else ""))
    st.sidebar.button("Sign out", key="auth_sign_out", on_click=st.logout, icon=":material/logout:")
