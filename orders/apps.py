from django.apps import AppConfig


class OrdersConfig(AppConfig):
    name = "orders"
    verbose_name = "Orders and instances"

    def ready(self) -> None:
        from orders import checks  # noqa: F401 - registers the system checks
