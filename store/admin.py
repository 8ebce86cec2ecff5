from django.contrib import admin

from store.models import Plan, WaitlistEntry


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "slug",
        "memory_mb",
        "vcpus",
        "disk_gb",
        "rabbitmq_version",
        "max_connections",
        "max_queues",
        "monthly_price",
        "currency",
        "stripe_price_id",
        "plain_ports",
        "is_active",
        "sort_order",
    )
    list_editable = ("is_active", "sort_order")
    list_filter = ("is_active", "currency", "rabbitmq_version", "plain_ports")
    search_fields = ("name", "slug", "stripe_price_id")
    prepopulated_fields = {"slug": ("name",)}


@admin.register(WaitlistEntry)
class WaitlistEntryAdmin(admin.ModelAdmin):
    list_display = ("email", "plan", "created_at", "notified_at")
    list_filter = ("plan", ("notified_at", admin.EmptyFieldListFilter))
    search_fields = ("email",)
