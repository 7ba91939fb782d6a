"""localstripe, the fake Stripe server of the embedded set-up, made to behave like Stripe where we rely on it.

Run: `python -m marketplace.commerce.localstripe_server --port 8420 --data-file var/localstripe.pickle`.

localstripe 1.15 covers customers, PaymentIntents, refunds and signed webhooks, but differs from
Stripe in ways that would force our real integration code to special-case it. Here it is
extended, never our code bent:
- PaymentIntents accept `transfer_group`, `description` and `receipt_email` (they are rejected).
- Stripe.js's `confirmCardPayment(clientSecret, {payment_method: {card}})` creates a PaymentMethod
  from the card and confirms the intent with the publishable key, as real Stripe.js does (the mock
  only handled 3-D Secure), so a buyer pays with 4242 4242 4242 4242 on our page.
- Charges carry Stripe's standard fee (2.9 % + 30 cents) on their balance transaction (it is 0),
  so fees flow through the ledger as they will in production.
- A refund sends `charge.refunded` (it sends nothing).
- Its state file is configurable (it is fixed at /tmp/localstripe.pickle, shared by every instance).
"""

import argparse
import pickle
import re

from localstripe import resources, server
from localstripe.errors import UserError
from localstripe.webhooks import schedule_webhook

STRIPE_FEE_PERCENT = 2.9
STRIPE_FEE_FIXED_CENTS = 30

# Requests Stripe.js makes with the publishable key (sent here as ?key=pk_..., which needs no CORS preflight).
PUBLISHABLE_KEY_PATHS = (r"^/v1/payment_methods$", r"^/v1/payment_intents/\w+/confirm$")

JS_EXTENSION = """
// marketplace: confirmCardPayment with a card element, as Stripe.js does it.
(function () {
  const mock = Stripe;
  Stripe = (apiKey) => {
    const stripe = mock(apiKey);
    const authenticate = stripe.confirmCardPayment;
    const post = async (path, fields) => {
      const response = await fetch(`${LOCALSTRIPE_BASE_API}${path}?key=${encodeURIComponent(apiKey)}`,
                                   {method: 'POST', body: new URLSearchParams(fields)});
      const body = await response.json().catch(() => ({}));
      return [response.status, body];
    };
    stripe.confirmCardPayment = async (clientSecret, data) => {
      const element = data && data.payment_method && data.payment_method.card;
      if (!element || typeof element.value === 'undefined') {
        return authenticate(clientSecret, data);
      }
      const card = (element.value || {}).card || {};
      const [pmStatus, method] = await post('/v1/payment_methods', {
        'type': 'card', 'card[number]': (card.number || '').replace(/\\s/g, ''),
        'card[exp_month]': card.exp_month || '', 'card[exp_year]': card.exp_year || '',
        'card[cvc]': card.cvc || '',
      });
      if (pmStatus !== 200) {
        return {error: {type: 'validation_error', message: 'Your card details are incomplete or invalid.'}};
      }
      const intentId = clientSecret.match(/^(pi_\\w+)_secret_/)[1];
      const [status, intent] = await post(`/v1/payment_intents/${intentId}/confirm`,
                                          {payment_method: method.id, client_secret: clientSecret});
      if (status !== 200) return {error: intent.error || {message: 'The payment failed.'}};
      if (intent.status === 'requires_action') return authenticate(clientSecret, data);
      return {paymentIntent: intent};
    };
    return stripe;
  };
})();
"""


def _patch_payment_intents():
    original_init = resources.PaymentIntent.__init__

    def __init__(self, transfer_group=None, description=None, receipt_email=None, **kwargs):
        original_init(self, **kwargs)
        self.transfer_group = transfer_group
        self.description = description
        self.receipt_email = receipt_email

    def _api_confirm(cls, id, payment_method=None, client_secret=None, key=None, **kwargs):
        if kwargs:
            raise UserError(400, "Unexpected " + ", ".join(kwargs))
        obj = cls._api_retrieve(id)
        if key is not None and client_secret != obj.client_secret:
            raise UserError(401, "Unauthorized")  # the publishable key is only good with the client secret
        if payment_method is not None:
            resources.PaymentMethod._api_retrieve(payment_method)  # 404 if unknown
            if obj.status not in ("requires_payment_method", "requires_confirmation"):
                raise UserError(400, "Bad request")
            obj.payment_method = payment_method
        if obj.status != "requires_confirmation":
            raise UserError(400, "Bad request")
        obj._confirm(on_failure_now=obj._report_failure)
        return obj

    resources.PaymentIntent.__init__ = __init__
    resources.PaymentIntent._api_confirm = classmethod(_api_confirm)
    # Routes hold the function registered at import time: point the route at the new one.
    url = "/v1/payment_intents/{id}/confirm"
    _replace_handler("POST", url, server.api_extra(resources.PaymentIntent._api_confirm, url))


def _patch_fees():
    original_init = resources.BalanceTransaction.__init__

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        if self.type == "charge" and self.amount > 0:
            self.fee = round(self.amount * STRIPE_FEE_PERCENT / 100) + STRIPE_FEE_FIXED_CENTS
            self.fee_details = [
                {"amount": self.fee, "currency": self.currency, "description": "Stripe processing fees",
                 "type": "stripe_fee", "application": None}
            ]  # fmt: skip

    resources.BalanceTransaction.__init__ = __init__
    # Exported objects list their properties; `net` is one already, computed from `fee`.


def _patch_refund_events():
    original_init = resources.Refund.__init__

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        charge = resources.Charge._api_retrieve(self.charge)
        schedule_webhook(resources.Event("charge.refunded", charge))

    resources.Refund.__init__ = __init__


def _patch_publishable_key_auth():
    original = server.get_api_key

    def get_api_key(request):
        key = original(request)
        if key is None and request.method == "POST":
            candidate = request.query.get("key", "")
            if candidate.startswith("pk_") and any(re.match(p, request.path) for p in PUBLISHABLE_KEY_PATHS):
                return candidate
        return key

    server.get_api_key = get_api_key


def _patch_store(path: str):
    store = resources.store

    def try_load_from_disk():
        try:
            with open(path, "rb") as file:
                old = pickle.load(file)
        except (FileNotFoundError, EOFError, pickle.UnpicklingError):
            return
        store.clear()
        store.update(old)

    def dump_to_disk():
        with open(path, "wb") as file:
            pickle.dump(dict(store), file, protocol=pickle.HIGHEST_PROTOCOL)

    store.try_load_from_disk = try_load_from_disk
    store.dump_to_disk = dump_to_disk


def _replace_handler(method: str, path: str, handler) -> None:
    for route in server.app.router.routes():
        if route.method == method and route.resource is not None and route.resource.canonical == path:
            route._handler = handler
            return
    raise LookupError(f"localstripe has no route {method} {path}")


def _serve_extended_js():
    async def stripe_js(request):
        response = server.localstripe_js(request)
        response.text = response.text + JS_EXTENSION
        return response

    _replace_handler("GET", "/js.stripe.com/v3/", stripe_js)


def apply_patches(data_file: str | None) -> None:
    _patch_payment_intents()
    _patch_fees()
    _patch_refund_events()
    _patch_publishable_key_auth()
    if data_file:
        _patch_store(data_file)
    _serve_extended_js()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8420)
    parser.add_argument("--data-file", default="", help="Keep state here between runs (default: start empty).")
    args = parser.parse_args(argv)
    apply_patches(args.data_file or None)
    if args.data_file:
        resources.store.try_load_from_disk()
    else:
        resources.store.dump_to_disk = lambda: None  # nothing kept: tests start from scratch
    server.web.run_app(server.app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
