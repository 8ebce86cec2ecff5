"""Issue 9 item 7: VM admin passwords are stored encrypted (orders/encryption.py).

The column is renamed (admin_password -> admin_password_encrypted, so no code reads a token as a
password), every stored password is encrypted with the current key, and the create-vm outbox
bodies lose their copy (the relay fills it in from the instance at publish time).
"""

from django.db import migrations, models


def encrypt_passwords(apps, schema_editor):
    from orders.lib import encryption

    Instance = apps.get_model("orders", "Instance")
    for pk, plain in Instance.objects.exclude(admin_password_encrypted="").values_list(
        "pk", "admin_password_encrypted"
    ):
        Instance.objects.filter(pk=pk).update(admin_password_encrypted=encryption.encrypt(plain))
    OutboxMessage = apps.get_model("orders", "OutboxMessage")
    for row in OutboxMessage.objects.filter(routing_key="create-vm"):
        admin = (row.body.get("options") or {}).get("admin") if isinstance(row.body, dict) else None
        if isinstance(admin, dict) and admin.get("password"):
            admin["password"] = ""
            row.save(update_fields=["body"])


def decrypt_passwords(apps, schema_editor):
    from orders.lib import encryption

    Instance = apps.get_model("orders", "Instance")
    for pk, token in Instance.objects.exclude(admin_password_encrypted="").values_list(
        "pk", "admin_password_encrypted"
    ):
        Instance.objects.filter(pk=pk).update(admin_password_encrypted=encryption.decrypt(token))


class Migration(migrations.Migration):

    dependencies = [
        ("orders", "0001_initial"),
    ]

    operations = [
        migrations.RenameField(
            model_name="instance", old_name="admin_password", new_name="admin_password_encrypted"
        ),
        migrations.AlterField(
            model_name="instance",
            name="admin_password_encrypted",
            field=models.TextField(blank=True),
        ),
        migrations.RunPython(encrypt_passwords, decrypt_passwords),
    ]
