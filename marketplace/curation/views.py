"""Staff pages: text-to-image search, the review queue, flag decisions, training captions."""

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, redirect, render

from marketplace.core.decorators import staff_required
from marketplace.curation import selectors, services
from marketplace.curation.engine import clip
from marketplace.curation.forms import CaptionForm, DecisionForm, SearchForm
from marketplace.curation.models import AssetAnalysis, Flag


@staff_required
def search(request):
    form = SearchForm(request.GET or None)
    hits, error = [], ""
    if form.is_valid():
        data = form.cleaned_data
        filters = selectors.SearchFilters(
            quality_ok=data["quality_ok"],
            tag=data["tag"],
            licence=data["licence"],
            consent=data["consent"],
            creator=data["creator"],
            min_short_side=data["min_short_side"] or 0,
        )
        query_vector = None
        if data["q"]:
            try:
                query_vector = clip.load_model(services.model_spec()).embed_texts([data["q"]])[0]
            except clip.ModelUnavailable as unavailable:
                error = str(unavailable)
        if not error:
            hits = selectors.search(query_vector, filters)
    return render(request, "curation/search.html", {"form": form, "hits": hits, "error": error})


@staff_required
def review_queue(request):
    kind = request.GET.get("kind", "")
    flags = selectors.open_flags(kind)[:200]
    return render(
        request,
        "curation/review_queue.html",
        {"flags": flags, "kind": kind, "counts": selectors.flag_counts(), "kinds": Flag.Kind.choices},
    )


@staff_required
def flag_detail(request, pk):
    flag = get_object_or_404(Flag.objects.select_related("asset", "other_asset"), pk=pk)
    form = DecisionForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            services.decide_flag(flag, actor=request.user, **form.cleaned_data)
        except ValidationError as error:
            form.add_error(None, error)
        else:
            messages.success(request, f"Decision recorded: {form.cleaned_data['action']}.")
            return redirect("curation:review")
    return render(
        request,
        "curation/flag_detail.html",
        {"flag": flag, "form": form, "decisions": flag.decisions.select_related("actor")},
    )


@staff_required
def analysis_detail(request, asset_pk):
    analysis = get_object_or_404(AssetAnalysis.objects.select_related("asset"), asset_id=asset_pk)
    form = CaptionForm(request.POST or None, initial={"caption": analysis.caption_override})
    if request.method == "POST" and form.is_valid():
        try:
            services.override_training_caption(analysis, actor=request.user, text=form.cleaned_data["caption"])
        except ValidationError as error:
            form.add_error("caption", error)
        else:
            messages.success(request, "Training caption saved.")
            return redirect("curation:analysis", asset_pk=asset_pk)
    return render(request, "curation/analysis_detail.html", {"analysis": analysis, "form": form})
