from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpResponse, HttpResponseForbidden, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from marketplace.commerce import downloads as download_links
from marketplace.commerce import selectors, services
from marketplace.commerce.models import PackLicence
from marketplace.commerce.stripe_gateway import PaymentProviderError
from marketplace.core.storage import download_redirect
from marketplace.packs.models import PackExport, PackVersion


@require_http_methods(["GET", "POST"])
def checkout(request, version_pk):
    version = get_object_or_404(PackVersion.objects.select_related("pack"), pk=version_pk)
    if request.method == "GET":
        if not request.user.is_authenticated:
            return redirect(f"{reverse('accounts:login')}?next={request.path}")
        licence = services.active_licence(request.user, version)
        if licence:
            return redirect("commerce:downloads", licence.pk)
        try:
            services.check_can_buy(request.user, version)
            refusal, current = "", None
        except services.CheckoutRefused as error:
            refusal, current = str(error), error.current
        return render(
            request,
            "commerce/checkout.html",
            {
                "version": version,
                "refusal": refusal,
                "current": current,
                "stripe_js_url": settings.STRIPE_JS_URL,
                "stripe_publishable_key": settings.STRIPE_PUBLISHABLE_KEY,
            },
        )
    # POST, from the page's script: start (or resume) the payment.
    if not request.user.is_authenticated:
        return JsonResponse({"error": "Log in to buy."}, status=401)
    if request.POST.get("agree") != "yes":
        return JsonResponse({"error": "Accept the licence terms to continue."}, status=400)
    try:
        started = services.start_checkout(buyer=request.user, version=version)
    except services.CheckoutRefused as error:
        refused = {"error": str(error)}
        if error.current is not None:  # a stale version: where the current one is bought
            refused["current_version"] = error.current.number
            refused["current_checkout_url"] = reverse("commerce:checkout", args=[error.current.pk])
        return JsonResponse(refused, status=409)
    except PaymentProviderError as error:
        return JsonResponse({"error": f"{error} Please try again in a moment."}, status=502)
    return JsonResponse(
        {
            "client_secret": started.client_secret,
            "payment_status": started.payment_status,
            "order_url": reverse("commerce:order", args=[started.order.pk]),
        }
    )


@login_required
@require_GET
def order_detail(request, pk):
    order = selectors.visible_order(request.user, pk)
    licence = PackLicence.objects.filter(order=order).first()
    return render(request, "commerce/order.html", {"order": order, "licence": licence})


@login_required
@require_GET
def order_status(request, pk):
    order = selectors.visible_order(request.user, pk)
    licence = PackLicence.objects.filter(order=order).first()
    return JsonResponse(
        {
            "status": order.status,
            "status_display": order.get_status_display(),
            "failure_reason": order.failure_reason,
            "licence_url": reverse("commerce:downloads", args=[licence.pk]) if licence and licence.is_active else "",
        }
    )


@csrf_exempt
@require_POST
def stripe_webhook(request):
    try:
        record = services.handle_webhook(request.body, request.headers.get("Stripe-Signature", ""))
    except services.InvalidWebhook as error:
        return HttpResponse(f"Invalid webhook: {error}", status=400, content_type="text/plain")
    except PaymentProviderError as error:
        # Stripe could not be asked for what the event needs: fail, and Stripe delivers it again later.
        return HttpResponse(str(error), status=503, content_type="text/plain")
    return HttpResponse(record.outcome or "ok", content_type="text/plain")


@login_required
@require_GET
def dashboard(request):
    return render(
        request,
        "commerce/dashboard.html",
        {
            "licences": selectors.buyer_licences(request.user),
            "orders": selectors.buyer_orders(request.user),
            "notices": selectors.revocation_notices(request.user)[:50],
        },
    )


@require_GET
def certificate(request, pk):
    """Public: anyone who has a licence's id can check it."""
    licence = get_object_or_404(PackLicence.objects.select_related("version", "version__pack", "buyer"), pk=pk)
    revocations = licence.version.revocations.select_related("item").order_by("revoked_at")
    if request.GET.get("format") == "json":
        return JsonResponse(
            {
                "licence_id": str(licence.pk),
                "status": "active" if licence.is_active else "revoked",
                "licensee": licence.buyer.username,
                "pack": licence.version.pack.slug,
                "version": licence.version.number,
                "manifest_sha256": licence.manifest_sha256,
                "granted_at": licence.granted_at.isoformat(),
                "revoked_at": licence.revoked_at.isoformat() if licence.revoked_at else None,
                "terms": licence.terms,
                "withdrawn_items": [r.item.key for r in revocations],
            }
        )
    return render(request, "commerce/certificate.html", {"licence": licence, "revocations": revocations})


@login_required
@require_GET
def downloads(request, pk):
    licence = selectors.own_licence(request.user, pk)
    if not licence.is_active:
        return render(request, "commerce/downloads.html", {"licence": licence, "exports": []}, status=403)
    rows = selectors.download_listing(licence)
    building = any(row["export"].status in (PackExport.Status.PENDING, PackExport.Status.BUILDING) for row in rows)
    context = {
        "licence": licence,
        "exports": rows,
        "building": building or not rows,
        "link_minutes": settings.DOWNLOAD_LINK_SECONDS // 60,
    }
    return render(request, "commerce/downloads.html", context)


@require_GET
def download_file(request, token):
    try:
        entry = download_links.resolve(token, request.user)
    except download_links.DownloadRefused as error:
        # A browser gets a page that says why and where fresh links are; a script (curl, wget) the plain reason.
        if request.get_preferred_type(["text/plain", "text/html"]) == "text/html":
            context = {"reason": str(error), "error": error, "link_minutes": settings.DOWNLOAD_LINK_SECONDS // 60}
            return render(request, "commerce/download_refused.html", context, status=403)
        return HttpResponseForbidden(str(error), content_type="text/plain")
    path, name = entry["path"], entry["name"]
    try:
        # Object storage (S3): a short-lived signed URL, so that the bytes do not pass through Django.
        redirect_response = download_redirect(default_storage, path, filename=name)
        if redirect_response is not None:
            return redirect_response
        handle = default_storage.open(path, "rb")
    except FileNotFoundError:
        raise Http404("The file is missing; staff have been told.") from None
    response = FileResponse(handle, as_attachment=True, filename=name)
    response["Cache-Control"] = "private, no-store"
    return response
