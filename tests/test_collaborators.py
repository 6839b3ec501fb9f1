"""Sharing an instance by email: alice invites carol, carol accepts with the address the
identity provider (or the link, for a guest) proved, and gets alice's access until removed.
Bad input is refused in words and writes nothing; bob, a stranger, gets 404 everywhere."""

import re

import pytest
from django.core import mail, signing
from django.urls import reverse
from django.utils import timezone

from instances import collaborators, selectors, services
from instances.models import Collaborator, Instance
from notebooks import services as notebook_services
from notebooks.models import Notebook, NotebookProfile
from workspaces.models import AuditEvent, GuestAccount, Workspace

from .conftest import make_user, workspace_of

BASE = "http://portal.test/"
GUEST_PASSWORD = {"password1": "a-long-passphrase-42", "password2": "a-long-passphrase-42"}


@pytest.fixture
def carol(db):
    return make_user("carol")


@pytest.fixture
def shared(alice, catalogue) -> Instance:
    instance = services.launch_instance(workspace=workspace_of(alice), name="shared-model",
                                        profile=catalogue[2], by=alice)
    return services.provision_instance(instance_id=instance.pk)


def invite(instance, by, *emails, access="manage") -> collaborators.Invitations:
    return collaborators.invite_collaborator(instance=instance, emails=list(emails), by=by,
                                             base_url=BASE, access=access)


def link_token(message) -> str:
    return re.search(r"/invitations/([^/\s]+)/", message.body).group(1)


def share_with(instance, owner, user, access="manage") -> Collaborator:
    invite(instance, owner, user.email, access=access)
    return collaborators.accept_invitation(token=link_token(mail.outbox[-1]), user=user,
                                      proven_email=user.email)


def test_an_invitation_mail_names_the_instance_the_inviter_the_expiry_and_a_link(
    alice, shared
):
    alice.first_name, alice.last_name = "Alice", "Liddell"
    alice.save()
    result = invite(shared, alice, "Carol@Example.com")

    assert [c.email for c in result.sent] == ["carol@example.com"] and not result.unsent
    message = mail.outbox[0]
    assert message.to == ["carol@example.com"]
    assert "Alice Liddell shared the GPU instance shared-model" in message.subject
    collaborator = Collaborator.objects.get()
    expires = timezone.localtime(collaborator.expires_at)
    assert expires.strftime("%b %-d, %Y") in message.body
    assert abs((collaborator.expires_at - timezone.now()).days - 7) <= 1
    token = link_token(message)
    assert f"{BASE}invitations/{token}/" in message.body
    # Only a hash of the link's secret is stored.
    _, secret = signing.loads(token, salt=collaborators.INVITATION_SALT)
    assert secret not in collaborator.token_hash and len(collaborator.token_hash) == 64
    assert AuditEvent.objects.filter(action="collaborator.invited", actor=alice).count() == 1


def test_several_addresses_are_invited_at_once_from_the_card(alice_client, shared):
    response = alice_client.post(reverse("instances:collaborators", args=[shared.pk]),
                                 {"emails": "carol@example.com, dan@example.com\neve@example.com"})
    assert response.status_code == 302
    assert sorted(m.to[0] for m in mail.outbox) == [
        "carol@example.com", "dan@example.com", "eve@example.com"]
    page = alice_client.get(reverse("instances:detail", args=[shared.pk])).content.decode()
    assert page.count("Invited · expires") == 3
    assert "Invitation sent to carol@example.com, dan@example.com, eve@example.com." in page


def test_without_a_mail_server_the_page_says_where_the_invitation_went(
    alice_client, shared, settings, tmp_path
):
    settings.EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    settings.EMAIL_FILE_PATH = tmp_path / "mail"
    alice_client.post(reverse("instances:collaborators", args=[shared.pk]),
                      {"emails": "carol@example.com"})
    page = alice_client.get(reverse("instances:detail", args=[shared.pk])).content.decode()
    assert "Invitation sent to" not in page
    assert (f"No mail server is set up, so the invitation to carol@example.com was written to "
            f"a file in {tmp_path / 'mail'} instead of mailed") in page
    [written] = (tmp_path / "mail").iterdir()
    assert "carol@example.com" in written.read_text()


@pytest.mark.parametrize(
    ("emails", "message"),
    [
        ("carol@example.com, not-an-email", "Not a valid email address: not-an-email."),
        ("alice@example.com", "alice@example.com is you."),
        ("", "Enter at least one email address."),
    ],
)
def test_bad_addresses_are_refused_on_the_form_and_nothing_is_written(
    alice_client, shared, emails, message
):
    events = AuditEvent.objects.count()
    response = alice_client.post(reverse("instances:collaborators", args=[shared.pk]),
                                 {"emails": emails})
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not Collaborator.objects.exists() and not mail.outbox
    assert AuditEvent.objects.count() == events


def test_a_collaborator_cannot_invite_the_owner_and_nobody_is_invited_twice(
    alice, carol, shared
):
    share_with(shared, alice, carol)
    invite(shared, alice, "dan@example.com")
    for who, email, reason in [
        (carol, "alice@example.com", "alice@example.com is the owner of shared-model."),
        (alice, "carol@example.com", "carol@example.com already collaborates."),
        (alice, "DAN@example.com", "dan@example.com is already invited"),
    ]:
        with pytest.raises(Exception) as refused:
            invite(shared, who, email)
        assert reason in str(refused.value)
    assert Collaborator.objects.count() == 2


def test_more_than_the_limit_is_refused_with_the_numbers(alice, shared, settings):
    settings.COLLABORATORS_PER_INSTANCE = 3
    invite(shared, alice, "a@example.com", "b@example.com")
    with pytest.raises(Exception) as refused:
        invite(shared, alice, "c@example.com", "d@example.com")
    assert ("shared-model can be shared with at most 3 people: 2 invited or collaborating, "
            "2 more asked. Nothing was sent.") in str(refused.value)
    assert Collaborator.objects.count() == 2 and len(mail.outbox) == 2


def test_a_deleted_instance_cannot_be_shared(alice, shared):
    services.delete_instance(instance=shared, by=alice)
    with pytest.raises(Exception, match="being deleted; it cannot be shared"):
        invite(shared, alice, "carol@example.com")
    assert not Collaborator.objects.exists()


# --- the link ---------------------------------------------------------------------------


def test_accepting_with_the_proven_address_shares_the_instance(alice, carol, shared):
    invite(shared, alice, "CAROL@example.com")
    collaborator = collaborators.accept_invitation(token=link_token(mail.outbox[0]), user=carol,
                                              proven_email="carol@EXAMPLE.com")
    assert collaborator.status == Collaborator.Status.ACCEPTED and collaborator.user == carol
    assert selectors.instance_for_user(user=carol, pk=shared.pk) == shared
    assert AuditEvent.objects.filter(action="collaborator.accepted", actor=carol).exists()


@pytest.mark.parametrize("problem", ["forged", "altered", "used", "expired", "revoked",
                                     "replaced by a resend", "instance deleted", "foreign"])
def test_an_unusable_link_is_refused_in_words_and_changes_nothing(
    client, alice, carol, bob, shared, problem
):
    invite(shared, alice, "carol@example.com")
    token = link_token(mail.outbox[0])
    collaborator = Collaborator.objects.get()
    user, email = carol, carol.email
    expected = {
        "forged": "This invitation link is not valid",
        "altered": "This invitation link is not valid",
        "used": "already accepted; it works only once",
        "expired": "This invitation expired on",
        "revoked": "This invitation was withdrawn",
        "replaced by a resend": "a newer one was sent",
        "instance deleted": "The instance shared-model has been deleted",
        "foreign": "This invitation is for <strong>carol@example.com</strong>, but you are "
                   "signed in as bob",
    }[problem]
    if problem == "forged":
        token = signing.dumps([collaborator.pk, "guessed"], key="not-our-secret",
                              salt=collaborators.INVITATION_SALT)
    elif problem == "altered":
        token = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    elif problem == "used":
        collaborators.accept_invitation(token=token, user=carol, proven_email=carol.email)
    elif problem == "expired":
        Collaborator.objects.update(expires_at=timezone.now() - timezone.timedelta(minutes=1))
    elif problem == "revoked":
        collaborators.revoke_invitation(collaborator=collaborator, by=alice)
    elif problem == "replaced by a resend":
        collaborators.resend_invitation(collaborator=collaborator, by=alice, base_url=BASE)
    elif problem == "instance deleted":
        services.delete_instance(instance=shared, by=alice)
    elif problem == "foreign":
        user, email = bob, bob.email  # bob got hold of carol's link

    before = list(Collaborator.objects.values_list("status", "user_id"))
    events = AuditEvent.objects.count()
    with pytest.raises(collaborators.InvitationError) as refused:
        collaborators.accept_invitation(token=token, user=user, proven_email=email)
    client.force_login(user)
    page = client.post(f"/invitations/{token}/")
    assert page.status_code in (400, 403)
    assert expected.split(",")[0] in (refused.value.message + page.content.decode())
    assert expected in page.content.decode()
    assert list(Collaborator.objects.values_list("status", "user_id")) == before
    assert AuditEvent.objects.count() == events
    assert selectors.instance_for_user(user=user, pk=shared.pk) is None or problem == "used"


def test_the_mismatch_page_says_which_address_it_was_for_and_how_to_proceed(
    client, alice, bob, shared
):
    invite(shared, alice, "carol@example.com")
    client.force_login(bob)
    page = client.get(f"/invitations/{link_token(mail.outbox[0])}/").content.decode()
    assert "This invitation is for <strong>carol@example.com</strong>" in page
    assert "sign out, open this link again and sign in as carol@example.com" in page
    assert "Accept invitation" not in page


def test_a_typed_email_is_never_trusted(client, alice, bob, shared):
    """bob sets his portal address to carol's: without the IdP vouching, it proves nothing."""
    invite(shared, alice, "carol@example.com")
    bob.email = "carol@example.com"
    bob.save()
    client.force_login(bob)
    page = client.post(f"/invitations/{link_token(mail.outbox[0])}/")
    assert page.status_code == 403
    assert selectors.instance_for_user(user=bob, pk=shared.pk) is None


def test_resend_mails_a_new_link_and_revoke_withdraws_it(alice_client, alice, shared):
    invite(shared, alice, "carol@example.com")
    collaborator = Collaborator.objects.get()
    resend = reverse("instances:collaborator_resend", args=[shared.pk, collaborator.pk])
    assert alice_client.post(resend).status_code == 302
    assert len(mail.outbox) == 2 and link_token(mail.outbox[0]) != link_token(mail.outbox[1])
    revoke = reverse("instances:collaborator_revoke", args=[shared.pk, collaborator.pk])
    assert alice_client.post(revoke).status_code == 302
    assert Collaborator.objects.get().status == Collaborator.Status.REVOKED
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"collaborator.invited", "collaborator.resent", "collaborator.revoked"} <= actions


# --- same access as the owner ------------------------------------------------------------


def test_a_collaborator_gets_the_owners_access(client, alice, carol, shared, catalogue):
    share_with(shared, alice, carol)
    minimal = NotebookProfile.objects.get(name="minimal")
    alices_notebook = notebook_services.deploy_notebook(instance=shared, name="alices-nb",
                                                        profile=minimal, by=alice)
    client.force_login(carol)

    detail = client.get(reverse("instances:detail", args=[shared.pk])).content.decode()
    assert "shared-model" in detail and "shared with you" in detail
    assert client.get(reverse("instances:status", args=[shared.pk])).status_code == 200
    assert "alices-nb" in client.get(f"/notebooks/?instance={shared.pk}").content.decode()
    assert "alices-nb" in client.get("/notebooks/").content.decode()
    nb_page = client.get(reverse("notebooks:detail", args=[alices_notebook.pk]))
    assert nb_page.status_code == 200

    deployed = client.post(reverse("notebooks:new"), {"name": "carols-nb", "profile": minimal.pk,
                                                      "instance": shared.pk})
    assert deployed.status_code == 302
    carols = Notebook.objects.get(name="carols-nb")
    assert client.post(reverse("notebooks:delete", args=[carols.pk])).status_code == 302

    for url in ("/", "/instances/"):
        page = client.get(url).content.decode()
        assert "Shared with me" in page and "shared-model" in page and "alice" in page

    # The GPUs count against alice's quota, not carol's.
    assert selectors.quota_usage(workspace=workspace_of(alice)).gpus_used == 2
    assert selectors.quota_usage(workspace=workspace_of(carol)).gpus_used == 0

    assert client.post(reverse("instances:delete", args=[shared.pk])).status_code == 302
    shared.refresh_from_db()
    assert shared.status == Instance.Status.DELETING
    assert AuditEvent.objects.filter(action="instance.deleting", actor=carol).exists()


def test_a_collaborator_can_remove_collaborators_but_never_the_owner(client, alice, carol,
                                                                     shared):
    share_with(shared, alice, carol)
    dan = make_user("dan")
    share_with(shared, alice, dan)
    client.force_login(carol)
    page = client.get(reverse("instances:detail", args=[shared.pk])).content.decode()
    owner_row = page.split('class="owner"')[1].split("</tr>")[0]
    assert "alice@example.com" in owner_row and "Remove" not in owner_row
    assert page.count(">Remove</summary>") == 1  # dan's row; carol's own says Leave
    assert page.count(">Leave</summary>") == 1
    assert "dan@example.com loses access at once" in page  # said before it is done
    # No collaborator id names the owner: every id outside this instance's rows is a 404.
    for pk in (0, 999999):
        url = reverse("instances:collaborator_remove", args=[shared.pk, pk])
        assert client.post(url).status_code == 404
    dans = Collaborator.objects.get(user=dan)
    assert client.post(reverse("instances:collaborator_remove",
                               args=[shared.pk, dans.pk])).status_code == 302
    assert selectors.instance_for_user(user=dan, pk=shared.pk) is None
    assert selectors.instance_for_user(user=alice, pk=shared.pk) == shared


def test_a_collaborator_who_can_use_it_does_all_but_delete_and_share_it(
        client, alice, carol, shared, catalogue):
    share_with(shared, alice, carol, access="use")
    dan = make_user("dan")
    dans = share_with(shared, alice, dan)
    client.force_login(carol)
    page = client.get(reverse("instances:detail", args=[shared.pk])).content.decode()
    assert "Can use · since" in page and "Can manage · since" in page
    assert 'name="emails"' not in page and ">Remove</summary>" not in page
    assert f'href="/instances/{shared.pk}/delete/"' not in page  # no Delete offered
    status = client.get(reverse("instances:status", args=[shared.pk])).content.decode()
    assert "delete/" not in status
    assert ">Leave</summary>" in page and "You can use it" in page

    # Using: a notebook deployed, stopped and started like anyone else's.
    minimal = NotebookProfile.objects.get(name="minimal")
    assert client.post(reverse("notebooks:new"), {"name": "carols-nb", "profile": minimal.pk,
                                                   "instance": shared.pk}).status_code == 302
    # Deleting and sharing, forged past the page: refused in words, nothing changed.
    refusal = "You can use shared-model but not delete it: ask its owner, alice"
    for response in (client.get(reverse("instances:delete", args=[shared.pk])),
                     client.post(reverse("instances:delete", args=[shared.pk]))):
        assert response.status_code == 403 and refusal in response.content.decode()
    invited = client.post(reverse("instances:collaborators", args=[shared.pk]),
                          {"emails": "eve@example.com", "access": "manage"})
    assert invited.status_code == 403 and "but not share it" in invited.content.decode()
    removed = client.post(reverse("instances:collaborator_remove", args=[shared.pk, dans.pk]))
    assert removed.status_code == 403
    shared.refresh_from_db()
    assert shared.status == Instance.Status.RUNNING
    assert not Collaborator.objects.filter(email="eve@example.com").exists()
    assert Collaborator.objects.get(pk=dans.pk).status == "accepted"
    assert not AuditEvent.objects.filter(actor=carol, action__in=[
        "instance.deleting", "collaborator.invited", "collaborator.removed"]).exists()

    # Leaving is always theirs.
    carols = Collaborator.objects.get(user=carol)
    assert client.post(reverse("instances:collaborator_remove",
                               args=[shared.pk, carols.pk])).status_code == 302
    assert selectors.instance_for_user(user=carol, pk=shared.pk) is None


def test_guests_get_at_most_what_the_portal_allows_them(client, alice, shared, settings):
    settings.GUEST_MAX_ACCESS = "use"
    invite(shared, alice, "olga@partner.example")  # asked to manage
    client.post(f"/invitations/{link_token(mail.outbox[-1])}/guest/", GUEST_PASSWORD)
    olga = Collaborator.objects.get(email="olga@partner.example")
    assert (olga.status, olga.access) == ("accepted", "use")
    assert client.post(reverse("instances:delete", args=[shared.pk])).status_code == 403


def test_removal_ends_access_on_the_next_request_and_renews_notebook_tokens(
    client, alice, carol, shared
):
    collaborator = share_with(shared, alice, carol)
    minimal = NotebookProfile.objects.get(name="minimal")
    notebook = notebook_services.deploy_notebook(instance=shared, name="nb", profile=minimal,
                                                 by=alice)
    Notebook.objects.filter(pk=notebook.pk).update(
        status=Notebook.Status.RUNNING, step="reachable",
        created_at=timezone.now() - timezone.timedelta(hours=1))
    old_token = notebook.token
    client.force_login(carol)
    assert client.get(reverse("instances:detail", args=[shared.pk])).status_code == 200

    assert collaborators.remove_collaborator(collaborator=collaborator, by=alice)

    for url in (reverse("instances:detail", args=[shared.pk]),
                reverse("instances:status", args=[shared.pk]),
                f"/notebooks/?instance={shared.pk}",
                reverse("notebooks:detail", args=[notebook.pk])):
        assert client.get(url, HTTP_HX_REQUEST="true").status_code == 404
    assert "shared-model" not in client.get("/instances/").content.decode()
    # The worker's task (sent by name) renews the token; here it runs inline.
    assert notebook_services.rotate_notebook_tokens(instance_id=shared.pk, reason="test") == 1
    notebook.refresh_from_db()
    assert notebook.token != old_token and notebook.status == Notebook.Status.DEPLOYING
    assert "Restarting with a new token (test)" in notebook.status_message
    told = mail.outbox[-1]
    assert told.to == ["alice@example.com"]
    assert "Your notebooks nb on the instance shared-model restarted with new tokens" in told.body
    assert notebook_services.rotate_notebook_tokens(instance_id=shared.pk) == 0  # done once
    alice_page = client.get(reverse("notebooks:detail", args=[notebook.pk]))  # carol's: 404
    assert alice_page.status_code == 404
    client.force_login(alice)
    alice_page = client.get(reverse("notebooks:detail", args=[notebook.pk])).content.decode()
    assert "the old token no longer works" in alice_page
    assert AuditEvent.objects.filter(action="collaborator.removed", actor=alice).exists()
    assert AuditEvent.objects.filter(action="notebook.token_rotated").exists()


def test_the_reconcile_pass_renews_tokens_a_lost_message_left_behind(alice, carol, shared):
    collaborator = share_with(shared, alice, carol)
    minimal = NotebookProfile.objects.get(name="minimal")
    notebook = notebook_services.deploy_notebook(instance=shared, name="nb", profile=minimal,
                                                 by=alice)
    collaborators.remove_collaborator(collaborator=collaborator, by=alice)
    summary = notebook_services.reconcile_notebooks()
    assert summary["tokens_rotated"] == 1
    assert Notebook.objects.get(pk=notebook.pk).token != notebook.token


# --- people whose only access is what was shared ------------------------------------------


def test_someone_without_a_role_sees_just_what_is_shared(client, alice, shared):
    dana = make_user("dana", group=None)
    client.force_login(dana)
    assert client.get("/").status_code == 403  # no access yet

    collaborator = share_with(shared, alice, dana)
    landing = client.get("/").content.decode()
    assert "Shared with me" in landing and "shared-model" in landing
    assert "Launch" not in landing and "GPUs in use" not in landing
    assert client.get(reverse("instances:detail", args=[shared.pk])).status_code == 200
    assert client.get(reverse("instances:new")).status_code == 403  # no catalogue
    assert not Workspace.objects.filter(owner=dana).exists()

    collaborators.remove_collaborator(collaborator=collaborator, by=alice)
    # Their only shared instance is gone: its URLs are 404s, as for anyone it is not shared
    # with (not the no-access page, which would say it exists); the rest says "no access".
    for url in (reverse("instances:detail", args=[shared.pk]),
                reverse("instances:status", args=[shared.pk]),
                reverse("access:shell", args=[shared.pk]),
                reverse("access:kubeconfig", args=[shared.pk])):
        assert client.get(url, HTTP_HX_REQUEST="true").status_code == 404, url
    assert client.get("/").status_code == 403
    assert client.get(reverse("instances:list")).status_code == 403


def test_someone_outside_the_idp_sets_a_password_and_becomes_a_guest(client, alice, shared):
    invite(shared, alice, "olga@partner.example")
    token = link_token(mail.outbox[0])
    page = client.get(f"/invitations/{token}/").content.decode()
    assert "No company account?" in page

    response = client.post(f"/invitations/{token}/guest/",
                           GUEST_PASSWORD)
    assert response["Location"] == reverse("instances:detail", args=[shared.pk])
    guest = GuestAccount.objects.get(email="olga@partner.example")
    assert selectors.instance_for_user(user=guest.user, pk=shared.pk) == shared
    assert not Workspace.objects.filter(owner=guest.user).exists()
    page = client.get(reverse("instances:detail", args=[shared.pk])).content.decode()
    assert "Guest</span>" in page  # marked on the collaborator list
    launching = client.get(reverse("instances:new"))
    assert launching.status_code == 403
    assert "As a guest you reach the instances shared with you" in launching.content.decode()
    # The link worked once.
    assert client.post(f"/invitations/{token}/guest/").status_code == 400

    # Removed, a guest is told who can let them back in: the owner, not an administrator.
    collaborators.remove_collaborator(
        collaborator=shared.collaborators.get(email="olga@partner.example"), by=alice)
    page = client.get("/")
    assert page.status_code == 403
    assert "its owner removed you. Ask them to invite you again." in page.content.decode()
    assert "add you to a group" not in page.content.decode()


def test_the_guest_form_says_each_problem_once(client, alice, shared):
    invite(shared, alice, "olga@partner.example")
    response = client.post(f"/invitations/{link_token(mail.outbox[0])}/guest/",
                           {"password1": "a-long-passphrase-42", "password2": "another-one-43"})
    assert response.status_code == 400
    assert response.content.decode().count("The two passwords differ.") == 1
    assert not GuestAccount.objects.exists()


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("GUEST_ACCOUNTS_ENABLED", False, "Guest accounts are turned off"),
    ("GUEST_EMAIL_DOMAINS", ["partner.example"], "not available for elsewhere.example"),
])
def test_administrators_turn_guests_off_or_limit_their_domains(client, alice, shared, settings,
                                                               setting, value, message):
    setattr(settings, setting, value)
    invite(shared, alice, "olga@elsewhere.example")
    token = link_token(mail.outbox[0])
    assert "Create guest account" not in client.get(f"/invitations/{token}/").content.decode()
    response = client.post(f"/invitations/{token}/guest/",
                           GUEST_PASSWORD)
    assert response.status_code == 400 and response.content.decode().count(message) == 1
    assert not GuestAccount.objects.exists()
    assert Collaborator.objects.get().status == Collaborator.Status.PENDING


# --- strangers ---------------------------------------------------------------------------


def test_bob_gets_404_on_every_collaborator_url(client, alice, bob, carol, shared):
    share_with(shared, alice, carol)
    invite(shared, alice, "dan@example.com")
    accepted = Collaborator.objects.get(user=carol)
    pending = Collaborator.objects.get(email="dan@example.com")
    client.force_login(bob)
    urls = [reverse("instances:collaborators", args=[shared.pk])] + [
        reverse(f"instances:collaborator_{verb}", args=[shared.pk, c.pk])
        for verb in ("resend", "revoke", "remove") for c in (accepted, pending)]
    events = AuditEvent.objects.count()
    for url in urls:
        response = client.post(url, {"emails": "bob2@example.com"})
        assert response.status_code == 404, url
        assert b"carol" not in response.content and b"shared-model" not in response.content
    assert AuditEvent.objects.count() == events and len(mail.outbox) == 2
    assert set(Collaborator.objects.values_list("status", flat=True)) == {"accepted", "pending"}
    # Nor can bob reach alice's collaborators through an instance of his own.
    bobs = services.launch_instance(workspace=workspace_of(bob), name="bobs",
                                    profile=shared.profile, by=bob)
    url = reverse("instances:collaborator_remove", args=[bobs.pk, accepted.pk])
    assert client.post(url).status_code == 404
    assert Collaborator.objects.get(pk=accepted.pk).status == Collaborator.Status.ACCEPTED


def test_the_embedded_default_writes_the_mail_where_the_operator_reads_it(
    alice, shared, settings, tmp_path
):
    settings.EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    settings.EMAIL_FILE_PATH = tmp_path / "mail"
    invite(shared, alice, "carol@example.com")
    [written] = list((tmp_path / "mail").iterdir())
    assert "To: carol@example.com" in written.read_text()
    assert f"{BASE}invitations/" in written.read_text()


def test_a_new_notebook_token_rolls_the_kubernetes_deployment_without_revealing_it():
    """A changed Secret reaches no running pod; a changed pod template restarts the server."""
    from clusters.backends.kubernetes import manifests as m

    from .test_kube_manifests import TLS, notebook

    def template(token: str) -> dict:
        objects = {o["kind"]: o for o in m.notebook_objects(notebook(token=token), TLS)}
        secret, deployment = objects["Secret"], objects["Deployment"]
        assert secret["stringData"] == {"token": token}
        return deployment["spec"]["template"]["metadata"]["annotations"]

    before, after = template("old-token-known-to-carol"), template("a-fresh-one")
    assert before != after
    assert "old-token-known-to-carol" not in str(before)
    assert template("a-fresh-one") == after  # the same token changes nothing: no restart


def test_a_guest_signs_in_again_with_a_password_and_a_second_factor(client, alice, shared):
    from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value
    from allauth.socialaccount.models import SocialApp

    invite(shared, alice, "olga@partner.example")
    client.post(f"/invitations/{link_token(mail.outbox[0])}/guest/", GUEST_PASSWORD)
    home = client.get("/").content.decode()
    assert "Protect your guest account" in home

    # Turning the second factor on asks for the password again, then for a code.
    activate = reverse("mfa_activate_totp")
    reauth = client.get(activate)
    assert reauth.status_code == 302 and "reauthenticate" in reauth["Location"]
    client.post(reauth["Location"], {"password": GUEST_PASSWORD["password1"]})
    assert client.get(activate).status_code == 200
    secret = client.session["mfa.totp.secret"]

    def code() -> str:
        return format_hotp_value(hotp_value(secret, int(timezone.now().timestamp()) // 30))

    assert client.post(activate, {"code": code()}).status_code == 302
    assert "Protect your guest account" not in client.get("/").content.decode()

    # With single sign-on on, passwords stay open to guests (and administrators), and the
    # second factor is asked for after the password.
    SocialApp.objects.create(provider="openid_connect", provider_id="sso", name="Company SSO",
                             client_id="portal", secret="x",
                             settings={"server_url": "http://127.0.0.1:9"})
    client.logout()
    signed_in = client.post("/accounts/login/?local", {
        "login": "olga@partner.example", "password": GUEST_PASSWORD["password1"]})
    assert signed_in.status_code == 302 and "/accounts/2fa/authenticate/" in signed_in["Location"]
    assert client.get(reverse("instances:detail", args=[shared.pk])).status_code == 302
    client.post(signed_in["Location"], {"code": "000000"})
    assert client.get(reverse("instances:detail", args=[shared.pk])).status_code == 302
    client.post(signed_in["Location"], {"code": code()})
    assert client.get(reverse("instances:detail", args=[shared.pk])).status_code == 200


# --- the edges a hostile or unlucky user meets -----------------------------------------


def test_guests_have_a_sign_in_of_their_own_that_the_browser_remembers(
        client, alice, shared, settings):
    from allauth.socialaccount.models import SocialApp

    invite(shared, alice, "olga@partner.example")
    message = mail.outbox[0].body
    assert "Guests sign in again later at:\n\n  http://portal.test/accounts/guest/" in message
    client.post(f"/invitations/{link_token(mail.outbox[0])}/guest/", GUEST_PASSWORD)
    # Single sign-on on, password sign-in off for everyone else: guests still get in.
    SocialApp.objects.create(provider="openid_connect", provider_id="sso", name="Company SSO",
                             client_id="portal", secret="x",
                             settings={"server_url": "http://127.0.0.1:9"})
    settings.PASSWORD_LOGIN_ENABLED = False
    client.logout()
    assert 'href="/accounts/guest/">Guest sign-in' in client.get("/signed-out/").content.decode()
    assert client.get("/accounts/login/?local").status_code == 403
    page = client.get("/accounts/guest/").content.decode()
    assert "Guest sign-in" in page and "Sign in with Company SSO" in page
    signed_in = client.post("/accounts/guest/", {
        "login": "olga@partner.example", "password": GUEST_PASSWORD["password1"]})
    assert signed_in.status_code == 302 and signed_in.cookies["gpupaas_guest"].value == "1"
    assert client.get(reverse("instances:detail", args=[shared.pk])).status_code == 200

    # Signed out, that browser's sign-in goes to the guests' page, not the IdP.
    client.post(reverse("account_logout"))
    assert "_auth_user_id" not in client.session
    assert client.get("/accounts/login/?next=/instances/")["Location"] == (
        "/accounts/guest/?next=%2Finstances%2F")
    idp = reverse("openid_connect_login", kwargs={"provider_id": "sso"})
    assert client.get("/accounts/login/?sso")["Location"].startswith(idp)

    # Anyone else is refused there, with the way in they do have.
    alice.set_password("alices-password-1")
    alice.save()
    refused = client.post("/accounts/guest/", {"login": alice.username,
                                               "password": "alices-password-1"})
    assert refused.status_code == 200
    assert "This page is for guests" in refused.content.decode()
    assert "_auth_user_id" not in client.session


def test_a_removed_collaborator_cannot_come_back_through_an_invitation_they_sent(
    client, alice, carol, shared
):
    collaborator = share_with(shared, alice, carol)
    invite(shared, carol, "carol.alt@example.com")  # carol's other address
    alt_link = link_token(mail.outbox[-1])
    client.force_login(alice)
    page = client.post(reverse("instances:collaborator_remove",
                               args=[shared.pk, collaborator.pk]), follow=True)
    assert ("The invitations they had sent (carol.alt@example.com) were withdrawn too."
            in page.content.decode())
    alt = Collaborator.objects.get(email="carol.alt@example.com")
    assert alt.status == Collaborator.Status.REVOKED
    removed = AuditEvent.objects.get(action="collaborator.removed")
    assert removed.data["invitations_withdrawn"] == ["carol.alt@example.com"]
    alt_self = make_user("carol-alt")
    alt_self.email = "carol.alt@example.com"
    alt_self.save()
    with pytest.raises(collaborators.InvitationError, match="withdrawn"):
        collaborators.accept_invitation(token=alt_link, user=alt_self,
                                        proven_email="carol.alt@example.com")
    assert selectors.instance_for_user(user=alt_self, pk=shared.pk) is None


def test_an_invitation_whose_sender_lost_access_another_way_is_refused(alice, carol, shared):
    """Level-checked at the link as well: whatever removed the sender, their link dies."""
    collaborator = share_with(shared, alice, carol)
    invite(shared, carol, "dave@example.com")
    link = link_token(mail.outbox[-1])
    Collaborator.objects.filter(pk=collaborator.pk).update(status=Collaborator.Status.REMOVED)
    with pytest.raises(collaborators.InvitationError,
                       match="carol no longer has access to shared-model"):
        collaborators.invitation_for_token(link)


def test_an_expired_invitation_neither_counts_nor_blocks_inviting_again(alice, shared,
                                                                         settings):
    settings.COLLABORATORS_PER_INSTANCE = 2
    invite(shared, alice, "a@example.com", "b@example.com")
    Collaborator.objects.filter(email="a@example.com").update(
        expires_at=timezone.now() - timezone.timedelta(minutes=1))
    invite(shared, alice, "a@example.com")  # blocked by its own expired row before
    assert sorted(Collaborator.objects.values_list("email", "status")) == [
        ("a@example.com", "pending"), ("a@example.com", "revoked"), ("b@example.com", "pending")]
    fresh = Collaborator.objects.get(email="a@example.com", status="pending")
    assert fresh.expires_at > timezone.now()


def test_invitation_mails_are_limited_per_hour_counted_on_sends(alice, shared, settings):
    settings.INVITATION_MAILS_PER_HOUR = 3
    invite(shared, alice, "a@example.com", "b@example.com")
    collaborators.revoke_invitation(collaborator=Collaborator.objects.get(email="a@example.com"),
                                    by=alice)
    invite(shared, alice, "a@example.com")  # the third mail this hour
    with pytest.raises(Exception, match=(
            "You can send at most 3 invitations an hour; 3 went out in the last hour, so 0 "
            "more can go now. Nothing was sent.")):
        invite(shared, alice, "c@example.com")
    with pytest.raises(Exception, match="at most 3 invitations an hour"):
        collaborators.resend_invitation(
            collaborator=Collaborator.objects.get(email="b@example.com"), by=alice,
            base_url=BASE)
    assert len(mail.outbox) == 3 and not Collaborator.objects.filter(email="c@example.com")


def test_an_inviter_name_with_a_newline_still_sends_a_one_line_subject(alice, shared):
    alice.first_name, alice.last_name = "Alice\r\nBcc: victim@example.com", "Liddell"
    alice.save()
    result = invite(shared, alice, "carol@example.com")
    assert result.sent and not result.unsent
    assert mail.outbox[0].subject.startswith(
        "Alice Bcc: victim@example.com Liddell shared the GPU instance")
    assert mail.outbox[0].to == ["carol@example.com"] and not mail.outbox[0].bcc


def test_a_mail_the_backend_refuses_leaves_the_invitation_to_resend(alice, shared,
                                                                      monkeypatch):
    def refuse(*args, **kwargs):
        raise ValueError("Header values can't contain newlines")

    monkeypatch.setattr(collaborators, "send_mail", refuse)
    result = invite(shared, alice, "carol@example.com")
    assert [c.email for c in result.unsent] == ["carol@example.com"] and not result.sent
    assert Collaborator.objects.get().status == Collaborator.Status.PENDING
