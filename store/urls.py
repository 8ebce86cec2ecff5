from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("accounts.urls")),
    path("orders/", include("orders.web.urls")),
    path("account/api-tokens/", include("orders.api.page_urls")),
    path("api/v1/", include("orders.api.urls")),
    path("", include("orders.web.catalogue_urls")),
]
