from django.apps import AppConfig


class StoreConfig(AppConfig):
    name = "store"
    verbose_name = "Catalogue"

    def ready(self) -> None:
        from store import checks  # noqa: F401 - registers the system checks
