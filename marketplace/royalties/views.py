"""Creator pages: earnings, monthly statements (CSV), payouts through Stripe Connect. Each creator sees only
their own figures: no page takes a creator id."""

from functools import wraps

import stripe
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from marketplace.core.money import format_cents
from marketplace.royalties import charts, selectors, services, statements
from marketplace.royalties.models import Payout


def creator_required(view):
    @login_required
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not request.user.is_creator:
            return render(request, "royalties/creator_required.html", status=403)
        return view(request, *args, **kwargs)

    return wrapped


@creator_required
def earnings(request):
    creator = request.user
    balance = selectors.balance(creator)
    context = {
        "balance": balance,
        "chart": charts.monthly_bars(selectors.monthly_earnings(creator), currency=balance.currency),
        "versions": selectors.earnings_by_version(creator),
        "assets": selectors.earnings_by_asset(creator),
        "months": selectors.statement_months(creator),
    }
    return render(request, "royalties/earnings.html", context)


@creator_required
def statement_csv(request, year, month):
    try:
        statement = selectors.statement(request.user, year, month)
    except (ValueError, OverflowError):
        raise Http404("No such month.") from None
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="statement-{year:04d}-{month:02d}.csv"'
    statements.write_csv(statement, response)
    return response


@creator_required
def payouts(request):
    creator = request.user
    if request.method == "POST":
        try:
            payout = services.pay_out(creator)
        except ValidationError as error:
            messages.error(request, error.messages[0])
        except stripe.StripeError as error:  # setting-up errors (bad key...) before any money moved
            messages.error(request, f"Stripe could not be reached: {error.user_message or error}")
        else:
            amount = format_cents(payout.amount_cents, payout.currency)
            if payout.status == Payout.Status.PAID:
                messages.success(request, f"{amount} is on its way to your Stripe account.")
            elif payout.status == Payout.Status.FAILED:
                messages.error(request, f"The payout of {amount} failed: {payout.failure_reason}")
            else:
                messages.warning(request, f"Stripe did not answer about your payout of {amount}; we will retry it.")
        return redirect("royalties:payouts")
    context = {
        "connect_enabled": settings.STRIPE_CONNECT_ENABLED,
        "connected": selectors.connected_account(creator),
        "balance": selectors.balance(creator),
        "minimum_cents": settings.PAYOUT_MINIMUM_CENTS,
        "payouts": selectors.payouts_of(creator)[:50],
    }
    return render(request, "royalties/payouts.html", context)


@creator_required
def connect_start(request):
    """POST: open the creator's Express account (once) and send them to Stripe's onboarding.
    GET: Stripe's refresh_url when a link expired: a fresh link for an existing account."""
    connected = selectors.connected_account(request.user)
    if request.method != "POST" and connected is None:
        return redirect("royalties:payouts")
    try:
        connected = connected or services.connect_account(request.user)
        url = services.onboarding_url(
            connected,
            refresh_url=request.build_absolute_uri(reverse("royalties:connect")),
            return_url=request.build_absolute_uri(reverse("royalties:connect-return")),
        )
    except ValidationError as error:
        messages.error(request, error.messages[0])
        return redirect("royalties:payouts")
    except stripe.StripeError as error:
        messages.error(request, f"Stripe could not set up your account: {error.user_message or error}")
        return redirect("royalties:payouts")
    return redirect(url)


@creator_required
def connect_return(request):
    """Where Stripe sends the creator back after onboarding: read the account's state."""
    connected = selectors.connected_account(request.user)
    if connected is None:
        return redirect("royalties:payouts")
    try:
        connected = services.refresh_connected_account(connected)
    except ValidationError as error:
        messages.error(request, error.messages[0])
    except stripe.StripeError as error:
        messages.error(request, f"Stripe could not be reached: {error.user_message or error}")
    else:
        if connected.payouts_enabled:
            messages.success(request, "Your Stripe account is ready to receive payouts.")
        else:
            messages.warning(request, "Stripe still needs some details before it can send you payouts.")
    return redirect("royalties:payouts")
