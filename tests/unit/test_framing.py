from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.test import override_settings

from portal.framing import PartitionedCookiesMiddleware, embeddable, frame_ancestors


@override_settings(PORTAL_EMBED_ORIGINS=["https://museum.example", "http://localhost:8080"])
def test_it_lets_the_portal_and_the_listed_sites_frame_an_embeddable_page() -> None:
    assert frame_ancestors() == "frame-ancestors 'self' https://museum.example http://localhost:8080"
    response = embeddable(HttpResponse())
    assert response["Content-Security-Policy"] == frame_ancestors()
    assert response.xframe_options_exempt


def _cookies(*, cross_site: bool) -> str:
    def view(request: HttpRequest) -> HttpResponse:
        response = HttpResponse()
        response.set_cookie("csrftoken", "t", samesite="None", secure=True)
        response.set_cookie("other", "o", samesite="None", secure=True)
        return response

    with override_settings(PORTAL_COOKIES_CROSS_SITE=cross_site):
        response = PartitionedCookiesMiddleware(view)(HttpRequest())
    assert isinstance(response, HttpResponse)
    return str(response.cookies)


def test_it_partitions_the_visitor_and_csrf_cookies_only_when_cross_site() -> None:
    crossed = _cookies(cross_site=True)
    assert "csrftoken=t; Path=/; SameSite=None; Partitioned; Secure" in crossed
    assert "other=o; Path=/; SameSite=None; Secure" in crossed
    assert "Partitioned" not in _cookies(cross_site=False)
