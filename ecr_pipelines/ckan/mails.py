"""The CKAN packager's mails: the package link (with the optional DOI paragraph) and the failure
notice, from templates a deployment may override with a YAML or JSON file (no Dagster).

Templates use ``str.format``'s ``{name}`` fields only. They are rendered by this module, not by
``str.format``: every value is substituted once (braces inside a value stay literal text), the
HTML templates get every value HTML-escaped, and a field naming anything but the template's
placeholders (``{x.y}``, ``{x[0]}``, ``{x!r}``, ``{x:>9}``, ``{}``, a misspelt name) is refused
when the templates are loaded, so a bad deployment fails when the definitions load instead of
when a mail is due.

Package mails: ``{resource_id}``, ``{zip_file_name}``, ``{ckan_host}``, ``{doi}``,
``{doi_body}`` / ``{doi_body_html}`` (the DOI paragraph, itself a template with the other
placeholders, rendered only when the request has a DOI, else empty) and ``{download_url}``.
Failure mails (which the legacy never sent): ``{resource_id}``, ``{ckan_host}``, ``{error}``.
"""

import html
import json
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

PACKAGE_PLACEHOLDERS = frozenset(
    {"resource_id", "zip_file_name", "ckan_host", "doi", "doi_body", "doi_body_html", "download_url"}
)
# The DOI paragraph is what fills {doi_body}; it cannot contain itself.
DOI_PLACEHOLDERS = PACKAGE_PLACEHOLDERS - {"doi_body", "doi_body_html"}
FAILURE_PLACEHOLDERS = frozenset({"resource_id", "ckan_host", "error"})
# Already-rendered HTML: inserted into the HTML body as it is.
_HTML_VALUES = frozenset({"doi_body_html"})
ERROR_LIMIT = 500

SUBJECT = "Resource from {ckan_host}"
BODY = """Hello,

The data you requested from {ckan_host} (resource {resource_id}) is ready.
Download {zip_file_name} from:

{download_url}

{doi_body}

The file is kept for a limited time only, so please download it soon.

Best wishes,
The {ckan_host} data packager
"""
BODY_HTML = """<html><body>
<p>Hello,</p>
<p>The data you requested from {ckan_host} (resource {resource_id}) is ready.
Download <a href="{download_url}">{zip_file_name}</a>.</p>
{doi_body_html}
<p>The file is kept for a limited time only, so please download it soon.</p>
<p>Best wishes,<br>The {ckan_host} data packager</p>
</body></html>
"""
DOI_BODY = (
    "A DOI has been created for this data: https://doi.org/{doi} (this may take a few hours to "
    "become active). Please ensure you reference this DOI when citing this data. For more "
    "information, follow the DOI link."
)
DOI_BODY_HTML = (
    '<p>A DOI has been created for this data: <a href="https://doi.org/{doi}">https://doi.org/{doi}</a> '
    "(this may take a few hours to become active). Please ensure you reference this DOI when "
    "citing this data. For more information, follow the DOI link.</p>"
)
FAILURE_SUBJECT = "Your download from {ckan_host} could not be prepared"
FAILURE_BODY = """Hello,

Your download of resource {resource_id} from {ckan_host} could not be prepared:

{error}

You may send the request again later; if it fails again, please contact the portal's team.

Best wishes,
The {ckan_host} data packager
"""
FAILURE_BODY_HTML = """<html><body>
<p>Hello,</p>
<p>Your download of resource {resource_id} from {ckan_host} could not be prepared:</p>
<p>{error}</p>
<p>You may send the request again later; if it fails again, please contact the portal's team.</p>
<p>Best wishes,<br>The {ckan_host} data packager</p>
</body></html>
"""


class TemplateError(ValueError):
    """A mail template (or the file of templates) that cannot be used."""


@dataclass(frozen=True)
class MailTemplates:
    subject: str = SUBJECT
    body: str = BODY
    body_html: str = BODY_HTML
    doi_body: str = DOI_BODY
    doi_body_html: str = DOI_BODY_HTML
    failure_subject: str = FAILURE_SUBJECT
    failure_body: str = FAILURE_BODY
    failure_body_html: str = FAILURE_BODY_HTML

    def __post_init__(self) -> None:
        for name in _ALLOWED:
            problem = _problem(name, getattr(self, name))
            if problem:
                raise TemplateError(f"mail template {name!r}: {problem}")


_ALLOWED: dict[str, frozenset[str]] = {
    "subject": PACKAGE_PLACEHOLDERS,
    "body": PACKAGE_PLACEHOLDERS,
    "body_html": PACKAGE_PLACEHOLDERS,
    "doi_body": DOI_PLACEHOLDERS,
    "doi_body_html": DOI_PLACEHOLDERS,
    "failure_subject": FAILURE_PLACEHOLDERS,
    "failure_body": FAILURE_PLACEHOLDERS,
    "failure_body_html": FAILURE_PLACEHOLDERS,
}


def _parse(template: str, allowed: frozenset[str]) -> list[tuple[str, str | None]]:
    """``(literal text, placeholder or None)`` pieces; TemplateError for any other kind of field."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:  # a lone '{' or '}'
        raise TemplateError(f"{exc} (write {{{{ and }}}} for literal braces)") from None
    pieces: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in parsed:
        if name is not None:
            field = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            if name not in allowed:
                raise TemplateError(f"unknown placeholder {field} (known: {', '.join(sorted(allowed))})")
            if conversion or spec:
                raise TemplateError(f"{field}: only plain {{name}} placeholders are supported")
        pieces.append((literal, name))
    return pieces


def _problem(name: str, value: object) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    try:
        # Rendering with dummy values runs every check a real mail would.
        _render(value, _ALLOWED[name], dict.fromkeys(_ALLOWED[name], "x"), html_escape=False)
    except TemplateError as exc:
        return str(exc)
    return None


def _render(template: str, allowed: frozenset[str], values: Mapping[str, str], *, html_escape: bool) -> str:
    out = []
    for literal, name in _parse(template, allowed):
        out.append(literal)
        if name is not None:
            value = values[name]
            out.append(html.escape(value) if html_escape and name not in _HTML_VALUES else value)
    return "".join(out)


def load_templates(path: str | Path | None) -> MailTemplates:
    """The defaults, overridden by a YAML or JSON file holding any subset of the field names."""
    if path is None:
        return MailTemplates()
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise TemplateError(f"{path}: mail templates must be a .yaml, .yml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise TemplateError(f"{path}: cannot be read: {exc}") from None
    if data is None:  # an empty YAML file
        data = {}
    if not isinstance(data, dict):
        raise TemplateError(f"{path}: must hold a mapping of template names to strings")
    for key, value in data.items():
        if key not in _ALLOWED:
            raise TemplateError(f"{path}: unknown key {key!r} (known: {', '.join(_ALLOWED)})")
        problem = _problem(key, value)
        if problem:
            raise TemplateError(f"{path}: key {key!r}: {problem}")
    return MailTemplates(**data)


def ckan_host(params: Mapping[str, object]) -> str:
    """The host the data came from: the netloc of ``api_url``, else of ``resource_url``."""
    url = params.get("api_url") or params.get("resource_url") or ""
    return urlsplit(str(url)).netloc


def _one_line(text: str) -> str:
    # A subject is a header: a newline coming from a value must not end it.
    return " ".join(text.split())


def _short_error(error: str) -> str:
    """What a requester is told: the error's own line, never a traceback, at most ERROR_LIMIT."""
    text = str(error).strip()
    if text.startswith("Traceback (most recent call last)"):
        lines = [line for line in text.splitlines() if line.strip()]
        text = lines[-1].strip() if lines else ""
    if len(text) > ERROR_LIMIT:
        text = text[: ERROR_LIMIT - 1].rstrip() + "…"
    return text or "an unexpected error"


def package_mail(
    templates: MailTemplates,
    *,
    resource_id: str,
    zip_file_name: str,
    ckan_host: str,
    doi: str | None,
    download_url: str,
) -> tuple[str, str, str]:
    """``(subject, text, html)`` of the mail that gives a requester the package's link."""
    values = {
        "resource_id": resource_id,
        "zip_file_name": zip_file_name,
        "ckan_host": ckan_host,
        "doi": doi or "",
        "download_url": download_url,
        "doi_body": "",
        "doi_body_html": "",
    }
    if doi:
        values["doi_body"] = _render(templates.doi_body, DOI_PLACEHOLDERS, values, html_escape=False)
        values["doi_body_html"] = _render(templates.doi_body_html, DOI_PLACEHOLDERS, values, html_escape=True)
    subject = _one_line(_render(templates.subject, PACKAGE_PLACEHOLDERS, values, html_escape=False))
    text = _render(templates.body, PACKAGE_PLACEHOLDERS, values, html_escape=False)
    if not doi:
        # The missing DOI paragraph must not leave a double gap in the text.
        text = re.sub(r"\n{3,}", "\n\n", text)
    body_html = _render(templates.body_html, PACKAGE_PLACEHOLDERS, values, html_escape=True)
    return subject, text, body_html


def failure_mail(
    templates: MailTemplates, *, resource_id: str, ckan_host: str, error: str
) -> tuple[str, str, str]:
    """``(subject, text, html)`` of the notice that a request failed (short, no traceback)."""
    values = {"resource_id": resource_id, "ckan_host": ckan_host, "error": _short_error(error)}
    return (
        _one_line(_render(templates.failure_subject, FAILURE_PLACEHOLDERS, values, html_escape=False)),
        _render(templates.failure_body, FAILURE_PLACEHOLDERS, values, html_escape=False),
        _render(templates.failure_body_html, FAILURE_PLACEHOLDERS, values, html_escape=True),
    )
