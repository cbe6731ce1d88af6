"""Mail templates of the CKAN packager: placeholders, the DOI paragraph, escaping, loading."""

import dataclasses
import json
from pathlib import Path

import pytest

from ecr_pipelines.ckan import mails
from ecr_pipelines.ckan.mails import (
    MailTemplates,
    TemplateError,
    ckan_host,
    failure_mail,
    load_templates,
    package_mail,
)

PACKAGE = {
    "resource_id": "the-resource-id",
    "zip_file_name": "the-zip-file.zip",
    "ckan_host": "example.com",
    "download_url": "https://files.example.org/ckan/the-zip-file.zip",
}


def test_placeholders_like_the_legacy() -> None:
    templates = MailTemplates(
        subject="{resource_id}-{zip_file_name}-{ckan_host}-from",
        body="{resource_id}-{zip_file_name}-{ckan_host}-body",
        body_html="{resource_id}-{zip_file_name}-{ckan_host}-html",
    )
    subject, text, body_html = package_mail(templates, doi=None, **PACKAGE)
    assert subject == "the-resource-id-the-zip-file.zip-example.com-from"
    assert text == "the-resource-id-the-zip-file.zip-example.com-body"
    assert body_html == "the-resource-id-the-zip-file.zip-example.com-html"


def test_the_default_mail_names_the_resource_and_gives_the_link() -> None:
    subject, text, body_html = package_mail(MailTemplates(), doi=None, **PACKAGE)
    assert subject == "Resource from example.com"
    for value in PACKAGE.values():
        assert value in text
        assert value in body_html
    assert '<a href="https://files.example.org/ckan/the-zip-file.zip">the-zip-file.zip</a>' in body_html
    assert "DOI" not in text and "DOI" not in body_html
    assert "\n\n\n" not in text  # no gap where the DOI paragraph would be


def test_the_doi_paragraph_only_with_a_doi() -> None:
    _, text, body_html = package_mail(MailTemplates(), doi="10.5519/qd.abc", **PACKAGE)
    assert "A DOI has been created for this data: https://doi.org/10.5519/qd.abc (this may" in text
    assert '<a href="https://doi.org/10.5519/qd.abc">https://doi.org/10.5519/qd.abc</a>' in body_html
    assert "&lt;" not in body_html  # the DOI paragraph's HTML is inserted as HTML, not escaped

    templates = MailTemplates(
        body="[{doi}|{doi_body}]",
        body_html="[{doi}|{doi_body_html}]",
        doi_body="doi {doi} for {resource_id} on {ckan_host}",
        doi_body_html="<b>{doi}</b> {zip_file_name}",
    )
    _, text, body_html = package_mail(templates, doi="10.1/x", **PACKAGE)
    assert text == "[10.1/x|doi 10.1/x for the-resource-id on example.com]"
    assert body_html == "[10.1/x|<b>10.1/x</b> the-zip-file.zip]"
    for doi in (None, ""):
        assert package_mail(templates, doi=doi, **PACKAGE)[1:] == ("[|]", "[|]")


def test_html_escapes_every_value() -> None:
    templates = MailTemplates(
        subject="{resource_id}",
        body="{resource_id} {doi_body}",
        body_html='<a href="{download_url}">{resource_id}</a> {doi_body_html}',
        doi_body_html="<i>{doi}</i>",
    )
    subject, text, body_html = package_mail(
        templates,
        resource_id="<script>&",
        zip_file_name="z.zip",
        ckan_host="example.com",
        doi='1/"x"<y>',
        download_url='https://x/?a=1&b="2"',
    )
    assert subject == "<script>&"  # text parts are not HTML
    assert text.startswith("<script>& ")
    assert body_html == (
        '<a href="https://x/?a=1&amp;b=&quot;2&quot;">&lt;script&gt;&amp;</a> <i>1/&quot;x&quot;&lt;y&gt;</i>'
    )


def test_braces_in_values_are_not_reinterpreted() -> None:
    templates = MailTemplates(subject="{resource_id}", body="{resource_id} {doi_body}", doi_body="{doi}")
    subject, text, _ = package_mail(
        templates,
        resource_id="{ckan_host}{0}{x.y}",
        zip_file_name="z",
        ckan_host="example.com",
        doi="{resource_id}",
        download_url="u",
    )
    assert subject == "{ckan_host}{0}{x.y}"
    assert text == "{ckan_host}{0}{x.y} {resource_id}"
    _, text, _ = failure_mail(
        MailTemplates(failure_body="{error}"), resource_id="r", ckan_host="h", error="{r}"
    )
    assert text == "{r}"


def test_literal_braces_and_a_one_line_subject() -> None:
    templates = MailTemplates(subject="{{x}} {resource_id}", body="{{{resource_id}}}")
    subject, text, _ = package_mail(templates, **{**PACKAGE, "resource_id": "a\r\nBcc: b"}, doi=None)
    assert subject == "{x} a Bcc: b"
    assert text == "{a\r\nBcc: b}"


def test_failure_mail() -> None:
    subject, text, body_html = failure_mail(
        MailTemplates(), resource_id="res-1", ckan_host="data.example.com", error="CKAN answered 500 <html>"
    )
    assert subject == "Your download from data.example.com could not be prepared"
    assert (
        "Your download of resource res-1 from data.example.com could not be prepared:\n\n"
        "CKAN answered 500 <html>" in text
    )
    assert "CKAN answered 500 &lt;html&gt;" in body_html


def test_failure_mail_never_carries_a_traceback() -> None:
    trace = (
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n'
        "    boom()\n"
        "DatastoreError: CKAN is down\n"
    )
    templates = MailTemplates(failure_body="{error}")
    assert (
        failure_mail(templates, resource_id="r", ckan_host="h", error=trace)[1]
        == "DatastoreError: CKAN is down"
    )
    long = failure_mail(templates, resource_id="r", ckan_host="h", error="x" * 5000)[1]
    assert len(long) == mails.ERROR_LIMIT and long.endswith("…")
    assert failure_mail(templates, resource_id="r", ckan_host="h", error="  ")[1] == "an unexpected error"


def test_ckan_host() -> None:
    assert ckan_host({"api_url": "https://data.nhm.ac.uk/api/3/action/datastore_search"}) == "data.nhm.ac.uk"
    assert ckan_host({"api_url": None, "resource_url": "http://files.example.com:8080/a.csv"}) == (
        "files.example.com:8080"
    )
    assert ckan_host({"api_url": "https://a.org/api", "resource_url": "https://b.org/x"}) == "a.org"
    assert ckan_host({}) == ""


def test_every_field_has_its_placeholder_set() -> None:
    assert set(mails._ALLOWED) == {f.name for f in dataclasses.fields(MailTemplates)}


def test_load_defaults() -> None:
    assert load_templates(None) == MailTemplates()


def test_load_a_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "mails.yaml"
    path.write_text(
        "subject: 'Data from {ckan_host}: {resource_id}'\n"
        "body: |\n"
        "  Get {zip_file_name} at {download_url}\n"
        "  {doi_body}\n"
        "failure_subject: Sorry\n"
    )
    templates = load_templates(path)
    assert templates.subject == "Data from {ckan_host}: {resource_id}"
    assert templates.failure_subject == "Sorry"
    assert templates.body_html == mails.BODY_HTML  # keys left out keep their defaults
    subject, text, _ = package_mail(templates, doi=None, **PACKAGE)
    assert subject == "Data from example.com: the-resource-id"
    assert text == f"Get the-zip-file.zip at {PACKAGE['download_url']}\n\n"
    (tmp_path / "empty.yml").write_text("")
    assert load_templates(tmp_path / "empty.yml") == MailTemplates()


def test_load_a_json_file(tmp_path: Path) -> None:
    path = tmp_path / "mails.json"
    path.write_text(json.dumps({"doi_body": "DOI: {doi}", "failure_body": "{resource_id}: {error}"}))
    templates = load_templates(str(path))
    assert templates.doi_body == "DOI: {doi}"
    assert failure_mail(templates, resource_id="r", ckan_host="h", error="e")[1] == "r: e"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"subjekt": "x"}, "unknown key 'subjekt'"),
        ({"subject": "{resourceid}"}, "key 'subject': unknown placeholder {resourceid}"),
        ({"body": "{resource_id.upper}"}, "key 'body': unknown placeholder {resource_id.upper}"),
        ({"body": "{resource_id[0]}"}, "key 'body': unknown placeholder {resource_id[0]}"),
        ({"body": "{}"}, "key 'body': unknown placeholder {}"),
        ({"body": "{0}"}, "key 'body': unknown placeholder {0}"),
        ({"body": "{resource_id!r}"}, "key 'body': {resource_id!r}: only plain {name} placeholders"),
        ({"body": "{resource_id:>9}"}, "key 'body': {resource_id:>9}: only plain {name} placeholders"),
        ({"body": "a { b"}, "key 'body': "),
        ({"failure_body": "{zip_file_name}"}, "key 'failure_body': unknown placeholder {zip_file_name}"),
        ({"doi_body": "{doi_body}"}, "key 'doi_body': unknown placeholder {doi_body}"),
        ({"subject": 3}, "key 'subject': must be a string, not int"),
        ({"body": None}, "key 'body': must be a string, not NoneType"),
        (["subject"], "must hold a mapping"),
    ],
)
def test_load_refuses_bad_templates(tmp_path: Path, content: object, expected: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(TemplateError) as info:
        load_templates(path)
    assert str(info.value).startswith(f"{path}: ")
    assert expected in str(info.value)


def test_load_refuses_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("subject: [unclosed\n")
    (tmp_path / "m.txt").write_text("subject: x\n")
    for name, expected in [
        ("m.yaml", "cannot be read"),
        ("missing.json", "cannot be read"),
        ("m.txt", "must be a .yaml, .yml or .json file"),
    ]:
        with pytest.raises(TemplateError, match=expected) as info:
            load_templates(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)


def test_templates_built_in_code_are_checked_too() -> None:
    with pytest.raises(TemplateError, match="'body'.*unknown placeholder {nope}"):
        MailTemplates(body="{nope}")
