from django.apps import AppConfig


class StoreConfig(AppConfig):
    name = "store"
    verbose_name = "Catalogue"

    def ready(self) -> None:
        pass
