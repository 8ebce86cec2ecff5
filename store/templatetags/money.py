from django import template

from store.models import Plan

register = template.Library()

SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£"}


@register.filter
def price(plan: Plan) -> str:
    """A plan's monthly price as customers read it: "$19.00", or "19.00 CHF" without a symbol."""
    symbol = SYMBOLS.get(plan.currency.lower())
    if symbol:
        return f"{symbol}{plan.monthly_price}"
    return f"{plan.monthly_price} {plan.currency.upper()}"


@register.filter
def memory(megabytes: int) -> str:
    """512 -> "512 MiB", 2048 -> "2 GiB"."""
    if megabytes >= 1024 and megabytes % 1024 == 0:
        return f"{megabytes // 1024} GiB"
    return f"{megabytes} MiB"
