from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.accounts import lockout


class TokenResponseSerializer(serializers.Serializer):
    token = serializers.CharField()


class ObtainTokenView(APIView):
    """Exchange a username and password for an API token (rate-limited like the log-in page)."""

    permission_classes = [AllowAny]
    authentication_classes = []
    serializer_class = AuthTokenSerializer

    @extend_schema(
        request=AuthTokenSerializer,
        responses={
            200: TokenResponseSerializer,
            429: OpenApiResponse(description="Too many failed attempts: wait, as `detail` says."),
        },
    )
    def post(self, request):
        serializer = AuthTokenSerializer(data=request.data, context={"request": request})
        if not serializer.is_valid():
            # django-axes (accounts/lockout.py) counted the failure, or refused the attempt before the password.
            if lockout.is_locked_out(request):
                return Response({"detail": lockout.lockout_message()}, status=status.HTTP_429_TOO_MANY_REQUESTS)
            return Response(serializer.errors, status=status.HTTP_400_BAD_REQUEST)
        user = serializer.validated_data["user"]
        lockout.record_success(request, user)
        token, _ = Token.objects.get_or_create(user=user)
        return Response({"token": token.key})
