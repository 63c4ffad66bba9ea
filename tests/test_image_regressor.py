import torch

from bodyfit.boxes import crop_boxes, square_boxes
from bodyfit.regressors.image_regressor import ImageRegressor, image_losses, synthetic_renders


def test_crop_boxes_maps_the_box_onto_the_crop():
    img = torch.zeros(1, 100, 200, 3)
    img[0, 40:60, 120:140] = 1.0  # a white square
    crop = crop_boxes(img, torch.tensor([[110.0, 30.0, 149.0, 69.0]]), size=40)
    assert crop.shape == (1, 3, 40, 40)
    inside = crop[0, 0, 12:28, 12:28]
    assert inside.min() > 0.9 and crop[0, 0, :8].max() < 0.1 and crop[0, 0, :, :8].max() < 0.1
    out = crop_boxes(img, torch.tensor([[-50.0, -50.0, -10.0, -10.0]]), size=8)
    assert out.abs().max() == 0  # outside the picture: zeros
    sq = square_boxes(torch.tensor([[0.0, 0.0, 10.0, 40.0]]))
    assert torch.allclose(sq, torch.tensor([[-19.0, -4.0, 29.0, 44.0]]))


def test_image_regressor_learns_on_synthetic_renders(anny):
    torch.manual_seed(0)
    crops, sb, sq = synthetic_renders(anny, 4, size=96, generator=torch.Generator().manual_seed(1))
    assert crops.shape == (4, 3, 96, 96) and 0 <= float(crops.min()) and float(crops.max()) <= 1
    reg = ImageRegressor(len(anny.free_pose_joints), anny.shape_dim, widths=(16, 32, 64, 128),
                         blocks=(1, 1, 1, 1), hidden=256)
    kp_index, _ = anny.keypoint_map("mediapipe33")
    opt = torch.optim.AdamW(reg.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        L = image_losses(reg, anny, reg(crops), sb, sq, kp_index)
        loss = L["joints"] + 0.1 * L["rotations"] + 0.1 * L["shape"] + L["keypoints_2d"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0]
    reg.eval()
    params = reg.predict(torch.rand(2, 120, 80, 3), torch.tensor([[10.0, 10, 60, 110]] * 2),
                         torch.eye(3)[None].expand(2, 3, 3) * torch.tensor([100.0, 100, 1]), anny)
    assert params.is_finite().all() and params.transl[:, 2].gt(0).all()


def test_the_regressor_start_scores_as_the_mean_body(anny):
    from bodyfit.regressors.image_regressor import evaluate_image_regressor

    torch.manual_seed(0)
    reg = ImageRegressor(len(anny.free_pose_joints), anny.shape_dim, widths=(8, 16, 32, 64),
                         blocks=(1, 1, 1, 1), hidden=64, crop_size=64)
    with torch.no_grad():  # an IEF head that adds nothing: the prediction is the start
        reg.ief[-1].weight.zero_()
        reg.ief[-1].bias.zero_()
    e = evaluate_image_regressor(reg, anny, n=6, batch_size=3)
    # the start is the mean body in the default pose: the same error, and a real one
    assert abs(e["pa_mpjpe"] - e["mean_body_pa_mpjpe"]) < 1e-3 * e["mean_body_pa_mpjpe"]
    assert 20 < e["mean_body_pa_mpjpe"] < 500 and e["mpjpe"] >= e["pa_mpjpe"]
