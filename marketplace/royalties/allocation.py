"""How one sale's money is split, in integer cents. Pure arithmetic: no Django, so it can be hammered by tests."""

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class SaleAllocation:
    amount_cents: int
    fee_cents: int
    net_cents: int  # what Stripe leaves us: amount - fee
    platform_share_cents: int
    pool_cents: int  # what the creators share: net - platform share
    creator_cents: dict[int, int]  # creator id -> their allocation
    asset_cents: dict[int, int]  # asset id -> that image's part of its creator's allocation
    asset_creator: dict[int, int]  # asset id -> creator id

    @property
    def platform_revenue_cents(self) -> int:
        """What the platform is credited: the amount less the pool (it bears Stripe's fee)."""
        return self.amount_cents - self.pool_cents


def largest_remainder(total: int, weights: dict[int, int]) -> dict[int, int]:
    """Split `total` cents in proportion to `weights` so that the parts add up exactly.

    Each key gets the floor of its exact share; the cents left over (fewer than the number of keys)
    go one each to the largest remainders, ties broken by the smaller key, so the result is
    deterministic and every part is within one cent of its exact share.
    """
    if total < 0:
        raise ValueError("Only a non-negative amount can be split.")
    weight_sum = sum(weights.values())
    if weight_sum <= 0 or any(weight <= 0 for weight in weights.values()):
        raise ValueError("Every weight must be positive.")
    parts = {key: total * weight // weight_sum for key, weight in weights.items()}
    left_over = total - sum(parts.values())
    by_remainder = sorted(weights, key=lambda key: (-(total * weights[key] % weight_sum), key))
    for key in by_remainder[:left_over]:
        parts[key] += 1
    return parts


def allocate_sale(
    amount_cents: int, fee_cents: int, share_percent: int, items: list[tuple[int, int]]
) -> SaleAllocation:
    """Split a sale: `items` are the version's (creator id, asset id) pairs.

    The platform takes `share_percent` of the net, rounded down (rounding favours creators); the rest is
    shared by the creators in proportion to how many of their images the version holds; each creator's
    allocation is shared equally by their images.
    """
    if not isinstance(amount_cents, int) or amount_cents <= 0:
        raise ValueError("The sale amount must be a positive number of cents.")
    if not isinstance(fee_cents, int) or not 0 <= fee_cents <= amount_cents:
        raise ValueError("Stripe's fee must be between 0 and the sale amount.")
    if not isinstance(share_percent, int) or not 0 <= share_percent <= 100:
        raise ValueError("The platform share must be a whole percentage from 0 to 100.")
    if not items:
        raise ValueError("A sale needs at least one image to pay royalties on.")
    asset_creator = dict((asset_id, creator_id) for creator_id, asset_id in items)
    if len(asset_creator) != len(items):
        raise ValueError("An image appears twice in the version.")

    net = amount_cents - fee_cents
    platform_share = net * share_percent // 100
    pool = net - platform_share
    item_counts = Counter(creator_id for creator_id, _ in items)
    creator_cents = largest_remainder(pool, dict(item_counts))
    assets_of: dict[int, dict[int, int]] = {}
    for asset_id, creator_id in asset_creator.items():
        assets_of.setdefault(creator_id, {})[asset_id] = 1  # equal weights
    asset_cents: dict[int, int] = {}
    for creator_id, allocation in creator_cents.items():
        asset_cents.update(largest_remainder(allocation, assets_of[creator_id]))
    return SaleAllocation(
        amount_cents=amount_cents,
        fee_cents=fee_cents,
        net_cents=net,
        platform_share_cents=platform_share,
        pool_cents=pool,
        creator_cents=creator_cents,
        asset_cents=asset_cents,
        asset_creator=asset_creator,
    )
