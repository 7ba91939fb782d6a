from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin

from marketplace.accounts.models import CreatorProfile, User


class CreatorProfileInline(admin.StackedInline):
    model = CreatorProfile
    can_delete = False


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    inlines = [CreatorProfileInline]
    list_display = ("username", "email", "is_creator", "is_buyer", "is_staff", "date_joined")
    list_filter = ("is_creator", "is_buyer", "is_staff", "is_active")
    fieldsets = DjangoUserAdmin.fieldsets + (("Marketplace roles", {"fields": ("is_creator", "is_buyer")}),)
